"""Coverage-guided fuzzing of the control protocol with atheris (libFuzzer).

    .venv/bin/python fuzz/fuzz_protocol.py -max_total_time=600 -max_len=4096

The first byte of an input chooses the mode, the role and where the stream is split:
- raw: the rest is fed as it is (framing, magic, versions, lengths);
- body: the rest is the body of a frame whose header the harness writes (so that the
  fuzzer spends its time in the JSON and the field rules, kadeploy.core.fields);
- keyed: like body, on a connection past a keyed handshake, with the right tag
  (kadeploy.core.protocol.FrameAuth) when the second byte is even and the fuzzed
  bytes as the tag when it is odd;
- discovery: the rest is a discovery request and an answer (kadeploy.control.discovery),
  parsed with and without a key.
The bytes go to a control connection, in two pieces and then EOF; only the documented
protocol errors may escape (and the discovery parsers return None, never raise).
"""
import struct
import sys

import atheris

with atheris.instrument_imports():
    from kadeploy.control import discovery
    from kadeploy.core import fields
    from kadeploy.core import protocol as P

CODES = sorted(P.MESSAGE_TYPES)
KEYS = (b"c" * 32, b"s" * 32)   # client -> server, server -> client
NONCE = "ab" * 16


def fuzz_discovery(data: bytes) -> None:
    request, _, reply = data.partition(b"\0\0")
    for key in (None, KEYS[0]):
        req = discovery.parse_request(request)
        assert req is None or (isinstance(req[0], str) and 0 < len(req[0].encode()) <= 255)
        ans = discovery.parse_answer(reply, key, "s", NONCE)
        assert ans is None or 0 < ans[1] < 65536


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, role_bit = data[0] & 3, data[0] & 4
    if mode == 3:
        return fuzz_discovery(data[1:])
    role = P.SERVER if role_bit else P.CLIENT
    body = data[2:]
    conn = P.ControlConnection(role)
    if mode:  # a well-formed header around a fuzzed body
        code = CODES[data[1] % len(CODES)]
        body = struct.pack(">2sBBI", P.MAGIC, P.PROTOCOL_VERSION, code, len(body)) + body
    if mode == 2:  # past a keyed handshake
        send, recv = KEYS if role == P.CLIENT else KEYS[::-1]
        conn.authenticate(send, recv)
        if data[1] & 1 == 0:  # the peer's real tag: the body reaches the parser
            body = P.FrameAuth(recv, send).seal(body)
    cut = (data[0] >> 3) * len(body) // 32
    try:
        for piece in (body[:cut], body[cut:]):
            if piece:  # b"" means EOF: fed once, last
                conn.receive_data(piece)
                while (msg := conn.next_event()) is not None:
                    assert fields.problem(msg) is None
        conn.receive_data(b"")
        while (msg := conn.next_event()) is not None:
            assert fields.problem(msg) is None
    except P.ProtocolError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
