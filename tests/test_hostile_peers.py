"""A server that lies in its Place: refused, naming the field and the server, before
the consumer runs. Loopback is enough for a peer that lies (no namespaces)."""
import pytest
from deploy import Deployment, assert_one_line_error


def hostile_server(place_body: dict):
    """A listening socket that welcomes one keyless client, then sends it a Place
    made by hand (not through kadeploy's encoder, which would refuse it)."""
    import json
    import socket
    import struct
    import threading

    from kadeploy.core import protocol as P
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen()

    def serve():
        conn, _ = lsock.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(P.encode(P.Welcome(node_id=1, software="x")))
            body = json.dumps(place_body).encode()
            conn.sendall(struct.pack(">2sBBI", P.MAGIC, P.PROTOCOL_VERSION, P.Place.CODE, len(body)) + body)
            conn.recv(4096)   # until the client goes

    threading.Thread(target=serve, daemon=True).start()
    return lsock


GOOD_PLACE = {"position": 1, "depth": 1, "n_nodes": 1, "arity": 1, "parent_host": "127.0.0.1",
              "parent_port": 9, "children": [], "token": "ab" * 16, "digest": "sha256",
              "chunk_size": 4 << 20}


@pytest.mark.parametrize("change,fragment", [
    ({"chunk_size": 0}, "Place.chunk_size 0 is out of range"),
    ({"digest": "md5"}, "Place.digest 'md5' is not one of"),
    ({"parent_port": 0}, "Place.parent_port 0 is out of range (1 to 65535)"),
    ({"digest": "hmac-sha256"}, "cannot verify the stream: digest algorithm hmac-sha256 needs the session key"),
])
def test_a_hostile_servers_place_is_refused_before_anything_runs(tmp_path, change, fragment):
    dep = Deployment(str(tmp_path))
    try:
        lsock = hostile_server(GOOD_PLACE | change)
        marker = tmp_path / "consumer-ran"
        c = dep.client("-h", "127.0.0.1", "-p", str(lsock.getsockname()[1]), "-e", f"touch {marker}; cat")
        assert_one_line_error(c, 3, fragment)
        if "cannot verify" not in fragment:
            assert "(from the server at 127.0.0.1)" in c.err
        assert not marker.exists()
        lsock.close()
    finally:
        dep.close()
