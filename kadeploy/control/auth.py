"""Shared-secret authentication: mutual HMAC challenge-response, without I/O.

Each side sends a fresh random nonce; each proves it knows the key by an HMAC over
both nonces, its role and what the connection is for. A recorded proof is useless
later because the other side's nonce is new every time (no replay), and a side that
does not know the key can neither join (client) nor impersonate the server or a
parent (it cannot produce the other proof).

Data links use the same scheme keyed by the deployment's token, mixed with the key
when there is one: without a key it proves membership of the deployment (the token
reaches registered nodes only) without sending the token on the link.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from typing import Optional

from kadeploy.errors import UsageError

ENV_KEY = "KADEPLOY_KEY"
ENV_KEY_FILE = "KADEPLOY_KEY_FILE"
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 4096
NONCE_BYTES = 16
_DOMAIN = b"kadeploy-auth-1"


def load_key(path: Optional[str], warn=None) -> Optional[bytes]:
    """The key from --key-file (or $KADEPLOY_KEY_FILE), else $KADEPLOY_KEY, else None."""
    path = path or os.environ.get(ENV_KEY_FILE) or None
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
    elif os.environ.get(ENV_KEY):
        key, source = os.environ[ENV_KEY].encode(), f"${ENV_KEY}"
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
    return secrets.token_hex(NONCE_BYTES)


def proof(key: bytes, role: str, nonce_a: str, nonce_b: str, context: str) -> str:
    """HMAC-SHA256 over the domain, the prover's role, both nonces and the context."""
    msg = b"|".join([_DOMAIN, role.encode(), nonce_a.encode(), nonce_b.encode(), context.encode()])
    return hmac.new(key, msg, hashlib.sha256).hexdigest()


def check(expected: str, got: str) -> bool:
    return hmac.compare_digest(expected.encode(), got.encode())


def data_key(key: Optional[bytes], token: str) -> bytes:
    """The key of the data links of one deployment."""
    if key is None:
        return token.encode()
    return hmac.new(key, b"data|" + token.encode(), hashlib.sha256).digest()


def well_formed_nonce(nonce: Optional[str]) -> bool:
    if not isinstance(nonce, str) or len(nonce) != 2 * NONCE_BYTES:
        return False
    try:
        bytes.fromhex(nonce)
    except ValueError:
        return False
    return True


def hello_context(hello) -> str:
    """What a registration's proofs cover, so that no field can be changed in transit."""
    return f"hello|{hello.session}|{hello.data_port}|{hello.advertise}|{hello.hostname}"


def go_context(go) -> str:
    return f"go|{go.session}"
