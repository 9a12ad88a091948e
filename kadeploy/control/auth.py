"""Shared-secret authentication: where the key comes from, and what each handshake covers.

The challenge-response itself is kadeploy.core.handshake (pure, used by control
connections and data links alike). Data links use it keyed by the deployment's
token, mixed with the key when there is one: without a key it proves membership of
the deployment (the token reaches registered nodes only) without sending the token
on the link.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import stat

from kadeploy.core.proofs import NONCE_BYTES
from kadeploy.defaults import ENV_KEY, ENV_KEY_FILE
from kadeploy.errors import UsageError

# No typing import: a keyed client's early registration loads this module.

MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 4096


def load_key(path: "str | None", warn=None, environ=os.environ) -> "bytes | None":
    """The key from --key-file (or $KADEPLOY_KEY_FILE), else $KADEPLOY_KEY, else None."""
    path = path or environ.get(ENV_KEY_FILE) or None
    if path:
        try:
            with open(path, "rb") as f:
                key = f.read(MAX_KEY_BYTES + 1)
                mode = os.fstat(f.fileno()).st_mode
        except OSError as e:
            raise UsageError(f"cannot read key file {path}: {e.strerror}")
        if mode & (stat.S_IRWXG | stat.S_IRWXO) and warn:
            warn(f"key file {path} is readable by others (chmod 600 it)")
        source = f"key file {path}"
    elif environ.get(ENV_KEY):
        key, source = environ[ENV_KEY].encode(), f"${ENV_KEY}"
    else:
        return None
    key = key.rstrip(b"\r\n")
    if len(key) > MAX_KEY_BYTES:
        raise UsageError(f"{source} is longer than {MAX_KEY_BYTES} bytes")
    if len(key) < MIN_KEY_BYTES:
        raise UsageError(f"{source} holds {len(key)} bytes; a key needs at least {MIN_KEY_BYTES} "
                         "(e.g. head -c 32 /dev/urandom | base64 > key)")
    return key


def new_nonce() -> str:
    """A fresh nonce for one handshake (kadeploy.core.proofs.NONCE_BYTES of the kernel's
    randomness, in hex)."""
    # os.urandom is what secrets.token_hex reads; secrets itself would load base64 and
    # re, about 14 ms of a keyed client's start-up before its registration.
    return os.urandom(NONCE_BYTES).hex()


def new_token() -> str:
    """A deployment's secret token, fresh for each server: 16 bytes of the kernel's
    randomness in hex (read as new_nonce reads it, without secrets' imports)."""
    return os.urandom(16).hex()


def data_key(key: "bytes | None", token: str) -> bytes:
    """The key of the data links of one deployment."""
    if key is None:
        return token.encode()
    return hmac.new(key, b"data|" + token.encode(), hashlib.sha256).digest()


def hello_context(hello) -> str:
    """What a registration's proofs cover, so that no field can be changed in transit."""
    return f"hello|{hello.session}|{hello.data_port}|{hello.advertise}|{hello.hostname}"


def go_context(go) -> str:
    return f"go|{go.session}"


def data_context(node_id: int, offset: int) -> str:
    """What a data link's proofs cover: which child, resuming where."""
    return f"{node_id}|{offset}"
