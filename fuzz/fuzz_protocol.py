"""Coverage-guided fuzzing of the control protocol with atheris (libFuzzer).

    .venv/bin/python fuzz/fuzz_protocol.py -max_total_time=600 -max_len=4096

The first byte of an input chooses the role, where the stream is split, and whether
the rest is fed as it is (raw bytes: framing, magic, versions, lengths) or as the
body of a frame whose header the harness writes (so that the fuzzer spends its time
in the JSON and field validation behind a well-formed header). Either way the bytes
go to a control connection, in two pieces and then EOF; only the documented protocol
errors may escape.
"""
import struct
import sys

import atheris

with atheris.instrument_imports():
    from kadeploy.core import protocol as P

CODES = sorted(P.MESSAGE_TYPES)


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    mode, role_bit = data[0] & 1, data[0] & 2
    role = P.SERVER if role_bit else P.CLIENT
    body = data[2:]
    if mode:  # a well-formed header around a fuzzed body
        code = CODES[data[1] % len(CODES)]
        body = struct.pack(">2sBBI", P.MAGIC, P.PROTOCOL_VERSION, code, len(body)) + body
    cut = (data[0] >> 2) * len(body) // 64
    conn = P.ControlConnection(role)
    try:
        for piece in (body[:cut], body[cut:]):
            if piece:  # b"" means EOF: fed once, last
                conn.receive_data(piece)
                while conn.next_event() is not None:
                    pass
        conn.receive_data(b"")
        while conn.next_event() is not None:
            pass
    except P.ProtocolError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
