"""A machine on the path of one control connection, without the key: it forwards
client <-> server frame by frame and does one thing to them (an attack), then prints
"attacked: ..." on stdout so that a test knows the attack really happened.

    python tests/mitm.py LISTEN_PORT SERVER_HOST SERVER_PORT ATTACK

Attacks (on the first connection only; later ones are forwarded untouched):
  rewrite-done      client's Done: "ok":false becomes "ok":true
  drop-progress     the client's second Progress is not forwarded
  replay-progress   the client's first Progress is forwarded twice
  reorder-progress  the client's first two Progress frames swap places
  reorder-ping      the first two Pings after the Place swap places
It knows the wire format (kadeploy.core.protocol) but not the key: after the
handshake each frame is header, body and a FrameAuth tag, which it cannot forge.
"""
import asyncio
import os
import struct
import sys

from kadeploy.core import protocol as P

CODE = {cls.__name__: code for code, cls in P.MESSAGE_TYPES.items()}
# MITM_UNTAGGED=1: frames carry no tag (to check by hand that each attack goes
# unseen when FrameAuth is switched off).
TAG = 0 if os.environ.get("MITM_UNTAGGED") else P.FrameAuth.TAG_SIZE


def say(what: str) -> None:
    print(f"attacked: {what}", flush=True)


async def frames(reader: asyncio.StreamReader, tagged_after: int):
    """(code, frame bytes) as they come; frames after the one of code `tagged_after`
    carry a tag (the handshake is over)."""
    tagged = False
    while True:
        try:
            header = await reader.readexactly(P.HEADER_SIZE)
        except asyncio.IncompleteReadError:
            return
        _, _, code, length = struct.unpack(">2sBBI", header)
        rest = await reader.readexactly(length + (TAG if tagged else 0))
        yield code, header + rest
        if code == tagged_after:
            tagged = True


def rewrite_done(frame: bytes) -> bytes:
    header, body = frame[:P.HEADER_SIZE], frame[P.HEADER_SIZE:len(frame) - TAG]
    tag = frame[len(frame) - TAG:]
    body = body.replace(b'"ok":false', b'"ok":true', 1)
    magic, version, code, _ = struct.unpack(">2sBBI", header)
    return struct.pack(">2sBBI", magic, version, code, len(body)) + body + tag


class Attack:
    def __init__(self, name: str) -> None:
        self.name = name
        self.held = None
        self.progress = 0
        self.placed = False
        self.pings = 0

    def client_frame(self, code: int, frame: bytes):
        """The frames to forward in place of one from the client."""
        if code == CODE["Done"] and self.name == "rewrite-done":
            forged = rewrite_done(frame)
            if forged != frame:
                say("Done rewritten to ok")
            return [forged]
        if code != CODE["Progress"]:
            return [frame]
        self.progress += 1
        if self.name == "drop-progress" and self.progress == 2:
            say("Progress 2 dropped")
            return []
        if self.name == "replay-progress" and self.progress == 1:
            say("Progress 1 replayed")
            return [frame, frame]
        if self.name == "reorder-progress" and self.progress in (1, 2):
            if self.progress == 1:
                self.held = frame
                return []
            say("Progress 1 and 2 swapped")
            return [frame, self.held]
        return [frame]

    def server_frame(self, code: int, frame: bytes):
        if code == CODE["Place"]:
            self.placed = True
        if self.name != "reorder-ping" or code != CODE["Ping"] or not self.placed:
            return [frame]
        self.pings += 1
        if self.pings == 1:
            self.held = frame
            return []
        if self.pings == 2:
            say("Pings 1 and 2 after the Place swapped")
            return [frame, self.held]
        return [frame]


async def pump(reader, writer, tagged_after, transform) -> None:
    try:
        async for code, frame in frames(reader, tagged_after):
            for out in transform(code, frame):
                writer.write(out)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def main(listen_port: int, host: str, port: int, attack: str) -> None:
    first = [True]

    async def handle(c_reader, c_writer):
        s_reader, s_writer = await asyncio.open_connection(host, port)
        if first[0]:
            first[0] = False
            a = Attack(attack)
            up, down = a.client_frame, a.server_frame
        else:
            up = down = lambda code, frame: [frame]
        # Client frames are tagged after its Auth; server frames after its Challenge.
        await asyncio.gather(pump(c_reader, s_writer, CODE["Auth"], up),
                             pump(s_reader, c_writer, CODE["Challenge"], down))

    server = await asyncio.start_server(handle, "0.0.0.0", listen_port)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]))
