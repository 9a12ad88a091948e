"""The frame's envelope, in a module that imports almost nothing: the 8-byte header
and the JSON body of a flat message (kadeploy.core.protocol has the rules).

The client's early registration (kadeploy.control.early) sends its Hello with this
before it has imported the protocol module (dataclasses, json, the field rules). Both
take the header from here, and once the protocol is loaded the client checks that
protocol.encode spells that Hello byte for byte as it was sent.
"""
from __future__ import annotations

import struct

try:   # the C speedup json.dumps itself uses; json.encoder would import re
    from _json import encode_basestring
except ImportError:  # pragma: no cover - an interpreter without the C module
    from json.encoder import encode_basestring

from kadeploy.version import PROTOCOL_VERSION

MAGIC = b"KD"
HEADER = struct.Struct(">2sBBI")
HEADER_SIZE = HEADER.size
# No typing import at run time (it would cost the early client): annotations are text.


def header(code: int, length: int) -> bytes:
    return HEADER.pack(MAGIC, PROTOCOL_VERSION, code, length)


def flat_body(pairs: "Iterable[Tuple[str, str | int | bool | None]]") -> bytes:
    """The body json.dumps(dict(pairs), separators=(",", ":"), ensure_ascii=False)
    writes, for values that are strings, integers, booleans or None."""
    parts = []
    for name, value in pairs:
        parts.append(f"{encode_basestring(name)}:{_flat_value(value)}")
    return ("{" + ",".join(parts) + "}").encode()


def _flat_value(value) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return str(value)
    if type(value) is str:
        return encode_basestring(value)
    raise TypeError(f"not a flat value: {type(value).__name__}")


def flat_frame(code: int, pairs) -> bytes:
    body = flat_body(pairs)
    return header(code, len(body)) + body
