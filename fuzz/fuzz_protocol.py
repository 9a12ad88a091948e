"""Coverage-guided fuzzing of the control protocol with atheris (libFuzzer).

    .venv/bin/python fuzz/fuzz_protocol.py -max_total_time=600 -max_len=4096

Every input is fed to a control connection of each role, whole and split at a point
chosen by the input; only the documented protocol errors may escape. The first byte
chooses the role and the split, the rest is the byte stream.
"""
import sys

import atheris

with atheris.instrument_imports():
    from kadeploy import protocol as P


def one_input(data: bytes) -> None:
    if not data:
        return
    role = P.SERVER if data[0] & 1 else P.CLIENT
    body = data[1:]
    cut = (data[0] >> 1) * len(body) // 128
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
