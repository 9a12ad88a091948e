"""--encrypt as codec stages (kadeploy.data.codec): the cipher of
kadeploy.core.encryption, its errors as CodecError (so that the tap stops the
consumer and names the chunk, as for any stream that does not decode), and the time
each node spends decrypting (reported like decompression)."""
from __future__ import annotations

import time
from typing import List, Optional

from kadeploy.core import encryption
from kadeploy.data.codec import CodecError, Stage


class EncryptStage(Stage):
    """The server's: after compression (ciphertext does not compress)."""
    name = encryption.ALGORITHM

    def __init__(self, key: bytes) -> None:
        self._enc = encryption.Encryptor(key)
        self.seconds = 0.0

    def update(self, data) -> bytes:
        t0 = time.perf_counter()
        try:
            return self._enc.update(data)
        finally:
            self.seconds += time.perf_counter() - t0

    def finish(self) -> bytes:
        return self._enc.finish()


class DecryptStage(Stage):
    """A node's: first, before decompression; for its own consumer only."""
    name = encryption.ALGORITHM

    def __init__(self, key: bytes) -> None:
        self._dec = encryption.Decryptor(key)
        self.seconds = 0.0          # CPU-bound time decrypting (the node's rate)

    def update(self, data) -> bytes:
        t0 = time.perf_counter()
        try:
            return self._dec.update(data)
        except encryption.StreamCorrupted as e:
            raise CodecError(str(e)) from None
        finally:
            self.seconds += time.perf_counter() - t0

    def finish(self) -> bytes:
        try:
            return self._dec.finish()
        except encryption.StreamCorrupted as e:
            raise CodecError(str(e)) from None


def encoders(stream_key: Optional[bytes]) -> List[Stage]:
    return [EncryptStage(stream_key)] if stream_key is not None else []


def decoders(algorithm: Optional[str], key: Optional[bytes], token: str) -> List[Stage]:
    """A node's decryption stage for Place.encrypt (the Place was checked before:
    kadeploy.control.policy.refuse_place)."""
    if algorithm is None:
        return []
    return [DecryptStage(encryption.stream_key(key, token))]
