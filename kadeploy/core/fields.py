"""What each field of each control message may hold, by its meaning, without I/O.

The protocol checks types (kadeploy.core.protocol); this says which values make
sense: ports 1-65535, counts and offsets >= 0, node ids >= 1, chunk sizes within
bounds a node can live with (0 would make it spin), algorithm names from the known
list, nonces and proofs of the right length, text of bounded length with no control
characters (it ends up in logs and reports, one line each). A message that breaks a
rule is refused as a whole with the field, the value and the rule named.
"""
from __future__ import annotations

import json
import math
import re
from typing import Callable, Dict, Optional

from kadeploy.core.encryption import ALGORITHMS as ENCRYPTIONS
from kadeploy.core.proofs import NONCE_BYTES, PROOF_DIGITS

MAX_INT = (1 << 63) - 1          # byte counts and offsets fit the relay's u64 counters
MAX_NODES = 1 << 20
MAX_TEXT = 1000                  # reasons, errors
MAX_FRAME_TEXT = 64 << 10        # JSON payloads: no more than a frame holds
MAX_NAME = 255                   # host names, addresses, sessions
MAX_STALL = 24 * 3600.0
# The codecs a Place may name; kadeploy.data.codec.decoder_stages builds them (the
# pure core cannot import the data plane, so the names are repeated here).
CODECS = ("zstd",)

Rule = Callable[[object], Optional[str]]   # None: fine; else what is wrong


def _range(lo, hi) -> Rule:
    def rule(v):
        if isinstance(v, float) and not math.isfinite(v):
            return "is not a finite number"
        return None if lo <= v <= hi else f"is out of range ({lo} to {hi})"
    return rule


def _text(limit: int, empty: bool = True) -> Rule:
    def rule(v):
        if not v and not empty:
            return "is empty"
        if len(v) > limit:
            return f"is longer than {limit} characters"
        if not v.isprintable():
            return "holds control characters"
        return None
    return rule


def _hex(*lengths: int) -> Rule:
    pattern = re.compile("[0-9a-f]*")

    def rule(v):
        if len(v) not in lengths or not pattern.fullmatch(v):
            return f"is not {' or '.join(map(str, lengths))} lower-case hex digits"
        return None
    return rule


def _one_of(names) -> Rule:
    def rule(v):
        return None if v in names else f"is not one of {', '.join(names)}"
    return rule


def _host(v) -> Optional[str]:
    return _text(MAX_NAME, empty=False)(v) or (" " in v and "holds a space") or None


def _each(rule: Rule) -> Rule:
    def check(items):
        for item in items:
            problem = rule(item)
            if problem:
                return f"has an item that {problem}"
        return None
    return check


def _json_object(limit: int) -> Rule:
    """JSON text of an object (an install's manifest and values, or its steps); what
    is inside is kadeploy.install's to check."""
    def rule(v):
        if len(v) > limit:
            return f"is longer than {limit} characters"
        try:
            value = json.loads(v)
        except ValueError:
            return "is not JSON"
        return None if isinstance(value, (dict, list)) else "is not a JSON object or list"
    return rule


def _digest_algorithm(v) -> Optional[str]:
    # Imported when a Place is checked, not when a client registers: the digests
    # (and blake3) are the data plane's, loaded after registration.
    from kadeploy.core.integrity import ALGORITHMS
    return _one_of(ALGORITHMS)(v)


def _chunk_size(v) -> Optional[str]:
    from kadeploy.core.integrity import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
    return _range(MIN_CHUNK_SIZE, MAX_CHUNK_SIZE)(v)


PORT = _range(1, 65535)
COUNT = _range(0, MAX_INT)
NODE_ID = _range(1, MAX_INT)
NONCE = _hex(2 * NONCE_BYTES)
PROOF = _hex(PROOF_DIGITS)
DIGEST = _hex(64)
SOFTWARE = _text(100, empty=False)
REASON = _text(MAX_TEXT)

RULES: Dict[str, Dict[str, Rule]] = {
    "Hello": {"software": SOFTWARE, "hostname": _text(MAX_NAME), "data_port": PORT,
              "session": _text(MAX_NAME, empty=False), "advertise": _host, "nonce": NONCE},
    "Go": {"software": SOFTWARE, "session": _text(MAX_NAME, empty=False), "nonce": NONCE},
    "Welcome": {"node_id": NODE_ID, "software": SOFTWARE},
    "Refuse": {"reason": REASON},
    "GoAck": {"nodes": _range(0, MAX_NODES), "message": REASON},
    "Place": {"position": _range(1, MAX_NODES), "depth": _range(1, MAX_NODES),
              "n_nodes": _range(1, MAX_NODES), "arity": _range(1, MAX_NODES),
              "parent_host": _host, "parent_port": PORT, "children": _each(NODE_ID),
              "token": _hex(32), "digest": _digest_algorithm,
              "chunk_size": _chunk_size,
              "stall_timeout": _range(0.05, MAX_STALL), "codec": _one_of(CODECS), "window": COUNT,
              "encrypt": _one_of(ENCRYPTIONS), "install": _json_object(MAX_FRAME_TEXT)},
    "Progress": {"bytes": COUNT},
    "End": {"bytes": COUNT, "error": REASON, "digest": DIGEST, "content_bytes": COUNT},
    "Done": {"bytes": COUNT, "seconds": _range(0.0, 1e9), "consumer_status": _range(-255, 255),
             "error": REASON, "backend": _text(MAX_NAME), "repairs": COUNT, "content_bytes": COUNT,
             "decode_seconds": _range(0.0, 1e9), "install": _json_object(MAX_FRAME_TEXT)},
    "Abort": {"reason": REASON},
    "DataHello": {"node_id": NODE_ID, "nonce": NONCE, "offset": COUNT},
    "Challenge": {"nonce": NONCE, "proof": PROOF},
    "Auth": {"proof": PROOF},
    "Digest": {"index": COUNT, "digest": DIGEST},
    "Reattach": {"host": _host, "port": PORT, "reason": REASON},
    "DropChild": {"node_id": NODE_ID},
    "Adopt": {"node_id": NODE_ID},
}


def _place(m) -> Optional[str]:
    if m.position > m.n_nodes:
        return f"position {m.position} is beyond the {m.n_nodes} node(s)"
    if m.depth > m.position:
        return f"depth {m.depth} is deeper than position {m.position} allows"
    if len(m.children) > m.arity or len(set(m.children)) != len(m.children):
        return f"lists {len(m.children)} children for arity {m.arity}, or one twice"
    return None


WHOLE: Dict[str, Callable[[object], Optional[str]]] = {"Place": _place}


def problem(msg) -> Optional[str]:
    """What is wrong with a message whose types are right, or None."""
    name = type(msg).__name__
    for field_name, rule in RULES.get(name, {}).items():
        value = getattr(msg, field_name)
        if value is None:
            continue
        what = rule(value)
        if what:
            shown = value if not isinstance(value, str) or len(value) <= 40 else value[:40] + "..."
            return f"{name}.{field_name} {shown!r} {what}"
    whole = WHOLE.get(name)
    what = whole(msg) if whole is not None else None
    return f"{name}: {what}" if what else None
