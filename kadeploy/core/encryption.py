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


class _Records:
    """Cuts a stream into records of `size` bytes. A record is handed on once a byte
    follows it (the stream's last one is only known at its end, and is marked so). A
    record wholly inside a piece is handed on as a view of it, one cut between pieces
    is gathered first: AES-GCM reads each byte once, and little else touches it. Each
    view is valid until the next one is asked for."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._record = bytearray(size)
        self.held = 0

    def whole(self, data):
        view, size = memoryview(data), self.size
        while view:
            if self.held == size:
                yield memoryview(self._record)
                self.held = 0
            if not self.held and len(view) > size:
                yield view[:size]
                view = view[size:]
                continue
            take = min(len(view), size - self.held)
            self._record[self.held:self.held + take] = view[:take]
            self.held += take
            view = view[take:]

    def last(self) -> memoryview:
        last, self.held = memoryview(self._record)[:self.held], 0
        return last


def _joined(out: list) -> bytes:
    return out[0] if len(out) == 1 else b"".join(out)


class Encryptor:
    """Plaintext in, records out (the server's stage)."""
    name = "aes-256-gcm"

    def __init__(self, key: bytes, record: int = RECORD) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self._aead = AESGCM(key)
        self.record = record
        self._records = _Records(record)
        self.index = 0
        self.content = 0
        self.wire = 0

    def _seal(self, plain, last: bool) -> bytes:
        out = self._aead.encrypt(_nonce(self.index), plain, _aad(self.index, last))
        self.index += 1
        self.wire += len(out)
        return out

    def update(self, data) -> bytes:
        self.content += len(data)
        return _joined([self._seal(r, last=False) for r in self._records.whole(data)])

    def finish(self) -> bytes:
        return self._seal(self._records.last(), last=True)


class Decryptor:
    """Records in, plaintext out (a node's stage, for its own consumer)."""
    name = "aes-256-gcm"

    def __init__(self, key: bytes, record: int = RECORD) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        self._aead = AESGCM(key)
        self.wire_record = record + TAG
        self._records = _Records(self.wire_record)
        self.index = 0
        self.wire = 0
        self.content = 0
        self.ended = False

    def _open(self, record, last: bool) -> bytes:
        from cryptography.exceptions import InvalidTag
        start = self.index * self.wire_record
        try:
            plain = self._aead.decrypt(_nonce(self.index), record, _aad(self.index, last))
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
        self.wire += len(data)
        return _joined([self._open(r, last=False) for r in self._records.whole(data)])

    def finish(self) -> bytes:
        if self._records.held < TAG:
            raise StreamCorrupted(f"encrypted stream cut: {self.wire} bytes end inside record "
                                  f"{self.index}, the stream's last record is missing")
        self.ended = True
        return self._open(self._records.last(), last=True)


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
