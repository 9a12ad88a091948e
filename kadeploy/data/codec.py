"""Stream codecs: what the server does to the stream once, before the relay, and each
node undoes for its own consumer only, after its digest tap.

    server:  producer -> encode stages -> relay -> children        (kadeploy.data.pump)
    node:    relay -> digest tap -> decode stages -> consumer      (same thread as the tap)

Relays forward the encoded bytes untouched (splice), and the digests are of the bytes
on the wire. A codec is a list of Stages, applied in order on the server and in
reverse order on a node; compression is one stage, and another (encryption with an
AEAD) joins the same list. The stage interface is two calls:

    update(data) -> bytes    the output so far (may be empty: a stage may buffer)
    finish()     -> bytes    the rest; a decoder raises CodecError on a cut stream

`--compress` takes none, zstd, zstd:LEVEL or auto (choose_spec). The zstd stage's wire
format is a series of records, each a 5-byte header (kind, payload length) and its
payload: a zstd frame of up to RECORD_SIZE bytes of content, or the content raw.
Independent frames let the server compress several records at once on several cores;
raw records let `auto` stop compressing when compression does not pay (AutoPolicy).
"""
from __future__ import annotations

import os
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Deque, List, Optional, Sequence, Tuple

NONE, ZSTD, AUTO = "none", "zstd", "auto"
DEFAULT_LEVEL = 3          # zstd's own default: ~0.3-0.5 GB/s per core, a good ratio
MAX_LEVEL = 19             # above this zstd needs "ultra" memory on every node
RECORD_SIZE = 4 << 20      # content bytes per record: large frames, small loss of ratio
RECORD = struct.Struct(">BI")
KIND_RAW, KIND_ZSTD = 0x52, 0x5A   # "R", "Z"
MAX_PAYLOAD = RECORD_SIZE + (RECORD_SIZE >> 6) + 1024   # a zstd frame's worst case, with margin


class CodecError(Exception):
    """A stream that does not decode, or a bad --compress value; one line for the user."""


@dataclass(frozen=True)
class Spec:
    """What --compress asked for: none, zstd at a level, or auto (zstd when it pays)."""
    name: str
    level: int = DEFAULT_LEVEL

    @property
    def wire(self) -> Optional[str]:
        """The codec named in Place: how nodes decode (auto and zstd both send records)."""
        return None if self.name == NONE else ZSTD

    def __str__(self) -> str:
        return self.name if self.name != ZSTD else f"zstd:{self.level}"


def parse_spec(text: str) -> Spec:
    """`none`, `zstd`, `zstd:LEVEL` (1-19) or `auto`; CodecError otherwise."""
    value = text.strip().lower()
    if value in (NONE, AUTO):
        return Spec(value)
    name, _, level = value.partition(":")
    if name != ZSTD:
        raise CodecError(f"unknown compression {text!r} (choose none, zstd, zstd:LEVEL or auto)")
    if not level:
        return Spec(ZSTD)
    try:
        n = int(level)
    except ValueError:
        n = 0
    if not 1 <= n <= MAX_LEVEL:
        raise CodecError(f"zstd level must be 1 to {MAX_LEVEL}, not {level!r}")
    return Spec(ZSTD, n)


def _zstd():
    try:
        import zstandard
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        raise CodecError("compression needs the zstandard package (pip install zstandard)") from None
    return zstandard


class Stage:
    """One transformation of the byte stream (see the module's docstring)."""
    name = "stage"

    def update(self, data) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        raise NotImplementedError


class Pipeline(Stage):
    """Stages in order: each one's output is the next one's input."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        self.stages = list(stages)
        self.name = "+".join(s.name for s in self.stages) or "none"

    def update(self, data) -> bytes:
        for stage in self.stages:
            data = stage.update(data)
        return data

    def finish(self) -> bytes:
        data = b""
        for stage in self.stages:
            data = stage.update(data) + stage.finish() if data else stage.finish()
        return data


# ------------------------------------------------------------------ zstd records

class AutoPolicy:
    """Whether compressing pays, from what the first records show (pure: fed numbers).

    Compressing pays when the stream is limited by its link: the content then flows at
    min(compression speed, decompression speed, link / ratio), against the link alone
    without it. Auto starts compressing, and measures the ratio and the speeds on the
    first PROBE records (a copy of each is decompressed), and the link over all but
    the first (kadeploy.data.linkmeter: from the kernel's counts of the first-level
    connections). If the link was the limit even for the compressed stream (busy
    nearly all the time), compressing pays and goes on: nothing was lost to the probe.
    Otherwise the encoder was the slower side, and the share of the time the link was
    busy tells its rate: about the wire rate over that share (more by the time a byte
    is in flight, small against a record's; less by the kernel counting busy time in
    jiffies, bench/RESULTS.md). When the speeds against
    that clearly decide (compressing SLACK times faster than MARGIN asks, or not
    faster at all), that is the choice; in between, the next RAW_PROBE records go raw,
    so the link's own rate is measured, and `decide` weighs the two. MARGIN keeps a
    near tie uncompressed (compressing costs every node CPU).
    """
    PROBE = 4
    RAW_PROBE = 4
    MARGIN = 1.1
    # How far the link's rate may lie above the wire rate over the busy share (a
    # byte's time in flight counts as busy): beyond it, no raw probe is needed.
    SLACK = 1.25
    # A stream changes along the way (a tree's packages, then its text): the decision
    # is revisited every EPOCH records' worth of content. Compressing, on the ratio it
    # gets (free to know); raw, on one piece compressed as a copy and the link's rate
    # over the epoch.
    EPOCH = 16
    SAMPLE_EVERY = 8    # raw: one piece in 8 is compressed as a copy (a tree mixes files)

    def __init__(self) -> None:
        self.content = 0
        self.compressed = 0
        self.compress_seconds = 0.0
        self.decompress_seconds = 0.0
        self.decision: Optional[bool] = None
        self.why = "the stream ended during the compressed probe (sent compressed)"
        self.changes = 0            # decisions reversed by a later epoch

    def restart(self) -> None:
        """Forget the samples: the next ones describe the next part of the stream."""
        self.content = self.compressed = 0
        self.compress_seconds = self.decompress_seconds = 0.0

    def _set(self, decision: bool, why: str) -> None:
        if self.decision is not None and decision != self.decision:
            self.changes += 1
        self.decision, self.why = decision, why + (f" (changed {self.changes}x)" if self.changes else "")

    def recheck_compressing(self, ratio: float) -> bool:
        """After an epoch compressed at `ratio`: go on unless that part did not compress."""
        if ratio >= 1 / self.MARGIN:
            self._set(False, f"ratio {ratio:.2f} over the last epoch: raw")
        return self.decision

    @property
    def ratio(self) -> float:
        return self.compressed / self.content if self.content else 1.0

    def sample(self, content: int, compressed: int, compress_s: float, decompress_s: float) -> None:
        self.content += content
        self.compressed += compressed
        self.compress_seconds += compress_s
        self.decompress_seconds += decompress_s

    @classmethod
    def limit_rate(cls, busy: Optional[Tuple[float, float]]) -> Optional[float]:
        """The wire bytes/s of a link busy busy[0] of the time at busy[1] bytes/s, when
        that made it the limit (busy 1 / MARGIN of the time or more: the encoder could
        have gone at most MARGIN times faster than it let it); None otherwise."""
        return busy[1] if busy is not None and busy[0] >= 1 / cls.MARGIN else None

    def decide_compressed(self, busy: Optional[Tuple[float, float]], workers: int = 1) -> Optional[bool]:
        """After the compressed probe. busy: (share of the time busy, wire bytes/s) of
        the link over the probe (kadeploy.data.linkmeter), None when not measured.
        True/False when that decides; None: the raw probe is to tell."""
        ratio = self.ratio
        link_rate = self.limit_rate(busy)
        if link_rate is not None and ratio < 1 / self.MARGIN:
            self._set(True, f"ratio {ratio:.2f}; the link ({link_rate / 1e6:.0f} MB/s of compressed "
                            "bytes) was the limit even compressed: compressing")
            return True
        fastest = min(self._speeds(workers))
        if busy is not None and busy[0] > 0 and busy[1] > 0:
            link = busy[1] / busy[0]        # about the link's rate (see the class docstring)
            speeds = (f"ratio {ratio:.2f}, compress and decompress {fastest / 1e6:.0f} MB/s, link at least "
                      f"{link / 1e6:.0f} MB/s (busy {busy[0]:.0%} of the time)")
            if ratio >= 1 / self.MARGIN or fastest <= self.MARGIN * link:
                self._set(False, f"{speeds}: raw")
                return False
            if fastest > self.SLACK * self.MARGIN * link:
                self._set(True, f"{speeds}: compressing")
                return True
        self.why = (f"ratio {ratio:.2f}; the link was not the limit while compressing: "
                    "the stream ended during the raw probe (sent raw)")
        return None

    def _speeds(self, workers: int) -> Tuple[float, float]:
        """Content bytes/s the compressors (all of them) and a node's decompressor manage."""
        c = self.content / self.compress_seconds * workers if self.compress_seconds else float("inf")
        d = self.content / self.decompress_seconds if self.decompress_seconds else float("inf")
        return c, d

    def decide(self, link_rate: Optional[float], workers: int) -> bool:
        """After the raw probe. link_rate: raw bytes/s the link took while it was the
        limit (None: it never was, the producer was the slower side)."""
        ratio = self.ratio
        c, d = self._speeds(workers)
        if link_rate is None:
            self._set(False, f"the link was never the limit (ratio {ratio:.2f})")
        else:
            with_it = min(c, d, link_rate / max(ratio, 1e-9))
            pays = with_it > self.MARGIN * link_rate
            self._set(pays, f"ratio {ratio:.2f}, compress {c / 1e6:.0f} MB/s, decompress {d / 1e6:.0f} MB/s, "
                            f"link {link_rate / 1e6:.0f} MB/s: {'compressing' if pays else 'raw'}")
        return self.decision


def _raw(record: bytes) -> bytes:
    return RECORD.pack(KIND_RAW, len(record)) + record


class ZstdEncoder(Stage):
    """Content in, records out; compresses up to `workers` records at once (zstandard
    releases the GIL), in order. With a policy (auto): the compressed probe, maybe the
    raw probe, then compressed or raw records as the policy decided. The link is
    measured from outside (kadeploy.data.linkmeter.LinkMeter): restart_rate() starts
    a measure, link_busy() tells what it saw (AutoPolicy.decide_compressed)."""
    name = "zstd"

    def __init__(self, level: int = DEFAULT_LEVEL, *, workers: int = 1,
                 policy: Optional[AutoPolicy] = None,
                 restart_rate: Callable[[], None] = lambda: None,
                 link_busy: Callable[[], Optional[Tuple[float, float]]] = lambda: None) -> None:
        self.zstd = _zstd()
        self.level, self.workers, self.policy = level, max(1, workers), policy
        self.restart_rate, self.link_busy = restart_rate, link_busy
        self._buf = bytearray()
        self._pending: Deque = deque()
        self._pool = None
        if self.workers > 1:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="kadeploy-zstd")
        # One compressor per thread (a zstd context must never be shared by two at once).
        self._local = threading.local()
        self.content = 0
        self.wire = 0
        self.sampled = 0         # records of the compressed probe measured
        self._probe_open = policy is not None
        self.raw_probed = 0
        self.emitted = 0         # content of the records handed on (the wire's own count)
        self._epoch = (0, 0)     # (emitted, wire) when the current epoch began
        self._raw_seen = 0       # raw pieces since the epoch began (one in SAMPLE_EVERY sampled)

    def _cctx(self):
        ctx = getattr(self._local, "cctx", None)
        if ctx is None:
            # A checksum in each frame (xxh64, nearly free): a bad record fails to
            # decode even with --no-verify, instead of feeding the consumer garbage.
            ctx = self._local.cctx = self.zstd.ZstdCompressor(level=self.level, write_checksum=True)
        return ctx

    def _frame(self, record: bytes, payload: bytes) -> bytes:
        if len(payload) >= len(record):   # incompressible: raw costs nobody anything
            return _raw(record)
        return RECORD.pack(KIND_ZSTD, len(payload)) + payload

    def _compress(self, record: bytes) -> bytes:
        return self._frame(record, self._cctx().compress(record))

    def _measure(self, record) -> tuple:
        """Compress `record`: the payload, and the sample of what it cost."""
        t0 = time.perf_counter()
        payload = self._cctx().compress(record)
        t1 = time.perf_counter()
        self.zstd.ZstdDecompressor().decompress(payload)
        t2 = time.perf_counter()
        return payload, (len(record), len(payload), t1 - t0, t2 - t1)

    def _compress_measured(self, record: bytes):
        """A record of the compressed probe, with what it cost (a worker's job)."""
        payload, sample = self._measure(record)
        return self._frame(record, payload), sample

    def _epoch_ends(self) -> None:
        """Every EPOCH records of content after the first decision: revisit it."""
        policy = self.policy
        emitted0, wire0 = self._epoch
        if policy is None or policy.decision is None or self.emitted - emitted0 < policy.EPOCH * RECORD_SIZE:
            return
        if policy.decision:
            if not policy.recheck_compressing((self.wire - wire0) / (self.emitted - emitted0)):
                self.restart_rate()
        elif policy.content:
            policy.decide(policy.limit_rate(self.link_busy()), self.workers)
            if not policy.decision:
                self.restart_rate()
        policy.restart()
        self._raw_seen = 0
        self._epoch = (self.emitted, self.wire)

    def _sample(self, piece) -> None:
        """Raw: pieces compressed as copies, for the ratio and the speeds."""
        if self.policy.decision is False:
            if self._raw_seen % self.policy.SAMPLE_EVERY == 0:
                self.policy.sample(*self._measure(piece)[1])
            self._raw_seen += 1

    def _queue(self, job, record: bytes) -> None:
        self._pending.append((len(record), job(record) if self._pool is None else self._pool.submit(job, record)))

    def _submit(self, record: bytes) -> None:
        self.content += len(record)
        policy = self.policy
        if policy is not None and policy.decision is None:
            if self._probe_open:
                self._queue(self._compress_measured, record)
                return
            self.raw_probed += 1
            self._pending.append((len(record), _raw(record)))
            if self.raw_probed == policy.RAW_PROBE:
                policy.decide(policy.limit_rate(self.link_busy()), self.workers)
                self._epoch = (self.emitted, self.wire)
                if not policy.decision:
                    self.restart_rate()
                policy.restart()
            return
        if policy is not None and not policy.decision:
            self._sample(record)
            self._pending.append((len(record), _raw(record)))
        else:
            self._queue(self._compress, record)
        self._epoch_ends()

    def _sampled(self, sample) -> None:
        """A record of the compressed probe was handed on. The link is measured from the
        first one on (before it, the compressors had nothing to give it yet); the probe
        is judged after PROBE records."""
        policy = self.policy
        policy.sample(*sample)
        self.sampled += 1
        if self.sampled == 1:
            self.restart_rate()
        if self._probe_open and self.sampled >= policy.PROBE:
            self._probe_open = False
            decision = policy.decide_compressed(self.link_busy(), self.workers)
            if decision is not True:     # the raw probe, or raw: the link is measured afresh
                self.restart_rate()
            if decision is not None:
                self._epoch = (self.emitted, self.wire)
                self.policy.restart()

    def _ready(self, wait_for_all: bool) -> bytes:
        out = []
        # Keep `workers` records in flight; hand on the finished ones, in order.
        while self._pending and (wait_for_all or len(self._pending) > self.workers
                                 or not hasattr(self._pending[0][1], "done") or self._pending[0][1].done()):
            length, item = self._pending.popleft()
            got = item.result() if hasattr(item, "done") else item
            framed, sample = got if isinstance(got, tuple) else (got, None)
            out.append(framed)
            self.emitted += length
            self.wire += len(framed)
            if sample is not None:
                self._sampled(sample)
        return b"".join(out)

    def update(self, data) -> bytes:
        if (self.policy is not None and self.policy.decision is False and not self._buf
                and not self._pending and len(data) <= RECORD_SIZE):
            # Auto chose raw: each piece is a record as it comes (one copy, no gathering).
            if not data:
                return b""
            self._sample(data)
            self.content += len(data)
            self.emitted += len(data)
            self.wire += RECORD.size + len(data)
            out = RECORD.pack(KIND_RAW, len(data)) + data
            self._epoch_ends()
            return out
        self._buf += data
        while len(self._buf) >= RECORD_SIZE:
            self._submit(bytes(self._buf[:RECORD_SIZE]))
            del self._buf[:RECORD_SIZE]
        return self._ready(False)

    def finish(self) -> bytes:
        if self._buf:
            self._submit(bytes(self._buf))
            self._buf = bytearray()
        out = self._ready(True)
        if self._pool is not None:
            self._pool.shutdown()
        return out


class ZstdDecoder(Stage):
    """Records in, content out; counts the time spent decompressing (the node's rate).

    Parsed as it streams: a raw record's bytes are handed on as they come (one copy,
    however the reads cut the records), only a zstd frame is gathered whole."""
    name = "zstd"

    def __init__(self) -> None:
        self._dctx = _zstd().ZstdDecompressor()
        self._head = bytearray()    # a record header cut by a read
        self._kind = KIND_RAW
        self._need = 0              # bytes of the current record's payload still to come
        self._frame = bytearray()   # the current zstd frame so far
        self.content = 0
        self.wire = 0
        self.seconds = 0.0          # CPU-bound time in decompress()

    def _start_record(self, header_at: int) -> None:
        kind, length = RECORD.unpack(self._head)
        self._head = bytearray()
        if kind not in (KIND_RAW, KIND_ZSTD) or length > MAX_PAYLOAD:
            raise CodecError(f"compressed stream is corrupt at byte {header_at}: not a record header")
        self._kind, self._need = kind, length

    def _decompress(self) -> bytes:
        t0 = time.perf_counter()
        try:
            return self._dctx.decompress(self._frame, max_output_size=RECORD_SIZE)
        except Exception as e:   # zstandard.ZstdError
            raise CodecError(f"compressed stream does not decode: {e}") from None
        finally:
            self.seconds += time.perf_counter() - t0
            self._frame = bytearray()

    def update(self, data) -> bytes:
        view = memoryview(data).cast("B")
        at = self.wire                  # wire offset of view[0]
        self.wire += len(view)
        out = []
        while view:
            if self._need == 0:             # at a record header (a zstd frame is done with)
                take = RECORD.size - len(self._head)
                self._head += view[:take]
                view, at = view[take:], at + min(take, len(view))
                if len(self._head) < RECORD.size:
                    break
                self._start_record(at - RECORD.size)
                if self._need:
                    continue
            take = min(self._need, len(view))
            if self._kind == KIND_RAW:
                out.append(bytes(view[:take]))
            else:
                self._frame += view[:take]
            view, at, self._need = view[take:], at + take, self._need - take
            if self._need == 0 and self._kind == KIND_ZSTD:
                out.append(self._decompress())
        for piece in out:
            self.content += len(piece)
        return out[0] if len(out) == 1 else b"".join(out)

    def finish(self) -> bytes:
        if self._head:
            raise CodecError(f"compressed stream cut inside a record header ({len(self._head)} of "
                             f"{RECORD.size} bytes)")
        if self._need:
            raise CodecError(f"compressed stream cut inside a record ({self._need} bytes missing)")
        return b""


# ---------------------------------------------------------------- assembling

def default_workers() -> int:
    """Compression threads: every core the server has, up to 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def encoder_stages(spec: Spec, *, workers: int = 1, policy: Optional[AutoPolicy] = None,
                   restart_rate: Callable[[], None] = lambda: None,
                   link_busy: Callable[[], Optional[Tuple[float, float]]] = lambda: None) -> List[Stage]:
    """The server's stages for --compress `spec` (empty: the stream goes as it is)."""
    if spec.name == NONE:
        return []
    if spec.name == AUTO:
        return [ZstdEncoder(DEFAULT_LEVEL, workers=workers, policy=policy or AutoPolicy(),
                            restart_rate=restart_rate, link_busy=link_busy)]
    return [ZstdEncoder(spec.level, workers=workers)]


def decoder_stages(wire: Optional[str]) -> List[Stage]:
    """A node's stages for the codec named in Place, in the order it applies them."""
    if wire is None:
        return []
    if wire == ZSTD:
        return [ZstdDecoder()]
    raise CodecError(f"the server uses codec {wire!r}, which this kadeploy does not know")
