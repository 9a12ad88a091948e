"""What a key makes mandatory, decided in one place for the CLI, the server and the node.

With a key, verification cannot be turned off by a message on the wire, nor by one
option alone: the server's --no-verify needs --insecure-no-verify beside it, and a
keyed node refuses a Place without digests unless it was given --insecure-no-verify
itself. --encrypt needs a key (the stream's key is derived from it), and so does a
node that is to decrypt."""
from __future__ import annotations

from typing import Optional

from kadeploy.core import protocol as P
from kadeploy.errors import UsageError


# click is imported where the commands are declared, only: a node run from its early
# registration (kadeploy.control.early_client) needs the rules below, not click.
def _insecure_option():
    import click
    return click.option(
        "--insecure-no-verify", is_flag=True,
        help="With a key, accept an unverified stream: on the server beside --no-verify, "
             "on a client to accept a server that sends no digests.")


def security_options(f):
    """The client's options of this module."""
    return _insecure_option()(f)


def server_security_options(f):
    """The server's options of this module."""
    import click
    f = _insecure_option()(f)
    return click.option(
        "--encrypt", is_flag=True,
        help="Encrypt the stream once (AES-256-GCM, keyed from --key-file and this deployment); "
             "relays forward the ciphertext as it is, each node decrypts for its consumer.")(f)


def server_encrypts(key: Optional[bytes], encrypt: bool) -> bool:
    if encrypt and key is None:
        raise UsageError("--encrypt needs a key (--key-file or $KADEPLOY_KEY): "
                         "the stream's key is derived from it")
    return encrypt


def server_verifies(key: Optional[bytes], no_verify: bool, insecure_no_verify: bool) -> bool:
    """Whether the server sends chunk digests; UsageError for a keyed --no-verify
    that was not confirmed."""
    if no_verify and key is not None and not insecure_no_verify:
        raise UsageError("--no-verify with a key leaves the nodes unable to tell a forged "
                         "stream from the real one: add --insecure-no-verify to mean it")
    return not no_verify


def refuse_place(place: P.Place, key: Optional[bytes], insecure_no_verify: bool) -> Optional[str]:
    """Why this node will not take this place, or None; decided before anything runs
    (no consumer is started for a stream it could not verify)."""
    if key is not None and place.digest is None and not insecure_no_verify:
        return ("the server sends no digests (--no-verify): with a key this node refuses "
                "an unverified stream unless given --insecure-no-verify")
    if place.encrypt is not None and key is None:
        return "the server encrypts the stream: this node needs the key (--key-file)"
    if place.digest is not None:
        from kadeploy.core.integrity import IntegrityError, new_hasher  # after registration
        try:
            new_hasher(place.digest, key)
        except IntegrityError as e:
            return f"cannot verify the stream: {e}"
    return None
