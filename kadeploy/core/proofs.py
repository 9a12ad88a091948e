"""The nonces and proofs of the challenge-response (kadeploy.core.handshake has the
exchange), in a module that imports only hashlib and hmac: a keyed client's early
registration (kadeploy.control.early) answers the server's Challenge with these
before the protocol module is loaded. Nonces are drawn outside the pure core
(kadeploy.control.auth.new_nonce): randomness is read from the kernel."""
from __future__ import annotations

import hashlib
import hmac

NONCE_BYTES = 16
PROOF_DIGITS = 2 * hashlib.sha256().digest_size   # a proof in hex
_DOMAIN = b"kadeploy-auth-1"
# The roles named inside the proofs of a control connection (the data links' are
# kadeploy.core.handshake.DATA's).
CONTROL_ASKER, CONTROL_ANSWERER = "client", "server"


def well_formed_nonce(nonce: object) -> bool:
    if not isinstance(nonce, str) or len(nonce) != 2 * NONCE_BYTES:
        return False
    try:
        bytes.fromhex(nonce)
    except ValueError:
        return False
    return True


def proof(key: bytes, role: str, asker_nonce: str, answerer_nonce: str, context: str) -> str:
    """HMAC-SHA256 over the domain, the prover's role, both nonces and the context."""
    msg = b"|".join([_DOMAIN, role.encode(), asker_nonce.encode(), answerer_nonce.encode(),
                     context.encode()])
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def check(expected: str, got: str) -> bool:
    return hmac.compare_digest(expected.encode(), got.encode())
