"""Encryption of the stream (--encrypt), once on the server and per node, without I/O.

A codec stage with the interface of kadeploy.data.codec's stages (branch `datapath`):

    update(data) -> bytes    the output so far (may be empty: a stage buffers)
    finish()     -> bytes    the rest; the decoder raises StreamCorrupted on a cut stream

The server's encoder runs after compression (compress, then encrypt: ciphertext does
not compress); relays forward the ciphertext untouched by splice, and each node's
decoder runs for its own consumer only, before decompression. Digests are of the
bytes on the wire, the ciphertext.

Wire format: the plaintext is cut into records of RECORD bytes; each record is
AES-256-GCM ciphertext with its 16-byte tag, so every record on the wire but the
last is exactly WIRE_RECORD bytes and needs no header. The nonce is the record's
index (never reused: one key per deployment), and the associated data binds the
index and whether the record is the last one. The encoder holds the end of the
stream back until finish(), so that exactly one record, the last, is marked last
(an empty one for an empty stream); a stream cut at a record boundary, or records
dropped, swapped or replayed, fail like a changed byte: the tag does not match, and
the record is named like a digest mismatch.

The key: HKDF-SHA256 of the session key with the deployment's token as salt
(stream_key). The token is fresh for every deployment and reaches only registered
nodes; without the key, knowing the token (it is not secret from a machine on the
path) gives nothing.
"""
from __future__ import annotations

from typing import Optional

# cryptography is imported where it is used: the protocol's field rules import this
# module for ALGORITHMS, on every client's start-up.

ALGORITHM = "aes-256-gcm"
ALGORITHMS = (ALGORITHM,)
RECORD = 1 << 20            # plaintext bytes per record: large enough to cost nothing per record
TAG = 16
WIRE_RECORD = RECORD + TAG
_AAD = b"kadeploy-stream-1"
_INFO = b"kadeploy-stream-key-1"


class StreamCorrupted(Exception):
    """The encrypted stream is not the server's: one line for the user."""


def stream_key(key: bytes, token: str) -> bytes:
    """The stream's AES-256 key for one deployment."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=token.encode(), info=_INFO).derive(key)


def _nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def _aad(index: int, last: bool) -> bytes:
    return _AAD + index.to_bytes(8, "big") + (b"\x01" if last else b"\x00")


class Encryptor:
    """Plaintext in, records out (the server's stage)."""
    name = "aes-256-gcm"

    def __init__(self, key: bytes, record: int = RECORD) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self._aead = AESGCM(key)
        self.record = record
        self._buf = bytearray()
        self.index = 0
        self.content = 0
        self.wire = 0

    def _seal(self, plain, last: bool) -> bytes:
        out = self._aead.encrypt(_nonce(self.index), bytes(plain), _aad(self.index, last))
        self.index += 1
        self.wire += len(out)
        return out

    def update(self, data) -> bytes:
        self._buf += data
        self.content += len(data)
        out = []
        # Keep at least one byte back: the record that ends the stream must be marked last.
        while len(self._buf) > self.record:
            out.append(self._seal(memoryview(self._buf)[:self.record], last=False))
            del self._buf[:self.record]
        return b"".join(out)

    def finish(self) -> bytes:
        out = self._seal(self._buf, last=True)
        self._buf = bytearray()
        return out


class Decryptor:
    """Records in, plaintext out (a node's stage, for its own consumer)."""
    name = "aes-256-gcm"

    def __init__(self, key: bytes, record: int = RECORD) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self._aead = AESGCM(key)
        self.wire_record = record + TAG
        self._buf = bytearray()
        self.index = 0
        self.wire = 0
        self.content = 0
        self.ended = False

    def _open(self, record, last: bool) -> bytes:
        from cryptography.exceptions import InvalidTag
        start = self.index * self.wire_record
        try:
            plain = self._aead.decrypt(_nonce(self.index), bytes(record), _aad(self.index, last))
        except InvalidTag:
            raise StreamCorrupted(
                f"corrupted data: chunk {self.index} (bytes {start} to {start + len(record) - 1}) "
                "fails its authentication tag (changed, cut, or not encrypted with this "
                "deployment's key)") from None
        self.index += 1
        self.content += len(plain)
        return plain

    def update(self, data) -> bytes:
        if self.ended and data:
            raise StreamCorrupted("corrupted data: bytes after the stream's last record")
        self._buf += data
        self.wire += len(data)
        out = []
        # A whole record is known not to be the last only once a byte follows it.
        while len(self._buf) > self.wire_record:
            out.append(self._open(memoryview(self._buf)[:self.wire_record], last=False))
            del self._buf[:self.wire_record]
        return b"".join(out)

    def finish(self) -> bytes:
        if len(self._buf) < TAG:
            raise StreamCorrupted(f"encrypted stream cut: {self.wire} bytes end inside record "
                                  f"{self.index}, the stream's last record is missing")
        out = self._open(self._buf, last=True)
        self._buf = bytearray()
        self.ended = True
        return out


def wire_length(plain_length: int, record: int = RECORD) -> int:
    """Bytes on the wire for a plaintext of this length (for --size and progress)."""
    full, rest = divmod(plain_length, record)
    if rest == 0 and full:
        full, rest = full - 1, record
    return full * (record + TAG) + rest + TAG


def check_algorithm(name: Optional[str]) -> Optional[str]:
    """Why a node cannot decrypt a stream announced with this name, or None."""
    if name is None or name in ALGORITHMS:
        return None
    return f"the server encrypts with {name!r}, which this kadeploy does not know"
