"""The install stream: every file system of one install in one byte stream, so one
chain carries them all and the relays see only bytes.

    stream  := record(KDI1 header) step* record(KDIE end)
    step    := record(KDIS step header) frame* end-frame record(KDIT trailer)
    record  := tag (4 bytes) | length (u32, big-endian) | JSON object
    frame   := u32 word | payload: the low 31 bits are a length; with bit 31 set the
               frame stands for that many zero bytes and has no payload (holes of a
               raw image); a data frame of length 0 ends the step's bytes.

Every step header names the manifest's digest, the step's index and the partition
it is for; the node checks them against the partition it is about to write, so a
stream never lands on the wrong file system. The trailer carries the count and the
SHA-256 of the step's frames (header words included), and how the reader of the
source ended: the node checks both before it calls the step done.
"""
from __future__ import annotations

import hashlib
import json
import struct
from typing import BinaryIO, Iterator, Optional, Tuple

STREAM_TAG, STEP_TAG, TRAILER_TAG, END_TAG = b"KDI1", b"KDIS", b"KDIT", b"KDIE"
RECORD = struct.Struct(">4sI")
WORD = struct.Struct(">I")
ZERO_FLAG = 1 << 31
MAX_FRAME = 1 << 20
MAX_RECORD = 1 << 16


class StreamError(RuntimeError):
    """The stream is cut, damaged, or not meant for this partition."""


# ------------------------------------------------------------------ writing

def write_record(out: BinaryIO, tag: bytes, body: dict) -> None:
    data = json.dumps(body, separators=(",", ":")).encode()
    out.write(RECORD.pack(tag, len(data)) + data)


class FrameWriter:
    """Frames of one step, digested as they are written."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.hash = hashlib.sha256()
        self.bytes = 0              # bytes the frames stand for (zero runs included)

    def _emit(self, word: int, payload: bytes = b"") -> None:
        head = WORD.pack(word)
        self.hash.update(head)
        self.hash.update(payload)
        self.out.write(head)
        if payload:
            self.out.write(payload)

    def data(self, chunk: bytes) -> None:
        for i in range(0, len(chunk), MAX_FRAME):
            piece = chunk[i:i + MAX_FRAME]
            self._emit(len(piece), piece)
            self.bytes += len(piece)

    def zeros(self, n: int) -> None:
        while n:
            piece = min(n, MAX_FRAME)
            self._emit(ZERO_FLAG | piece)
            self.bytes += piece
            n -= piece

    def end(self) -> None:
        self._emit(0)

    @property
    def digest(self) -> str:
        return self.hash.hexdigest()


# ------------------------------------------------------------------ reading

def _read_exact(inp: BinaryIO, n: int, what: str) -> bytes:
    got = inp.read(n)
    if len(got) == n:
        return got
    buf = bytearray(got)
    while len(buf) < n:
        more = inp.read(n - len(buf))
        if not more:
            raise StreamError(f"the stream ended inside {what} ({len(buf)} of {n} bytes)")
        buf += more
    return bytes(buf)


def read_record(inp: BinaryIO, tag: bytes, what: str) -> dict:
    head = inp.read(RECORD.size)
    if len(head) < RECORD.size:
        head += _read_exact(inp, RECORD.size - len(head), what) if head else b""
        if len(head) < RECORD.size:
            raise StreamError(f"the stream ended before {what}")
    got, length = RECORD.unpack(head)
    if got != tag:
        raise StreamError(f"expected {what}, found {got!r}: not an install stream, or damaged")
    if length > MAX_RECORD:
        raise StreamError(f"{what} of {length} bytes is over the limit: damaged stream")
    try:
        body = json.loads(_read_exact(inp, length, what))
    except ValueError:
        raise StreamError(f"{what} is not valid JSON: damaged stream") from None
    if not isinstance(body, dict):
        raise StreamError(f"{what} is not a JSON object: damaged stream")
    return body


class FrameReader:
    """Yields (zero_run, length, payload) until the end frame; digests as it goes."""

    def __init__(self, inp: BinaryIO, what: str) -> None:
        self.inp, self.what = inp, what
        self.hash = hashlib.sha256()
        self.bytes = 0

    def __iter__(self) -> Iterator[Tuple[bool, int, bytes]]:
        try:
            yield from self._frames()
        except StreamError as e:
            raise StreamError(f"{e}, after {self.bytes} bytes of it") from None

    def _frames(self) -> Iterator[Tuple[bool, int, bytes]]:
        while True:
            head = _read_exact(self.inp, WORD.size, self.what)
            self.hash.update(head)
            (word,) = WORD.unpack(head)
            zero, length = bool(word & ZERO_FLAG), word & ~ZERO_FLAG
            if length > MAX_FRAME:
                raise StreamError(f"a frame of {length} bytes in {self.what}: damaged stream")
            if not zero and length == 0:
                return
            payload = b""
            if not zero:
                payload = _read_exact(self.inp, length, self.what)
                self.hash.update(payload)
            self.bytes += length
            yield zero, length, payload

    @property
    def digest(self) -> str:
        return self.hash.hexdigest()


def check_step_header(header: dict, manifest_digest: str, index: int, partition: str,
                      kind: str) -> Optional[str]:
    """Why this step's bytes must not be written here (None: they are for here)."""
    if header.get("manifest") != manifest_digest:
        return (f"the stream is for manifest {header.get('manifest')!r}, this node has "
                f"{manifest_digest!r}")
    if header.get("index") != index or header.get("partition") != partition:
        return (f"the stream's step {header.get('index')} is for partition "
                f"{header.get('partition')!r}; this node expects step {index}, {partition!r}")
    if header.get("kind") != kind:
        return f"the stream sends a {header.get('kind')!r}, the manifest says {kind!r}"
    return None
