"""`kadeploy netboot serve` for real, fast: dnsmasq in a namespace the test creates,
DHCP clients (busybox udhcpc) in other namespaces on the same bridge, HTTP over real
sockets; and the start-up errors (missing image, a second DHCP server on the port)."""
from __future__ import annotations

import concurrent.futures
import json
import re
import shutil
import os
import subprocess
import tempfile
import sys
import time
from pathlib import Path

import pytest

import netbootlab as lab

pytestmark = [pytest.mark.netns,
              pytest.mark.skipif(shutil.which("dnsmasq") is None or shutil.which("busybox") is None,
                                 reason="needs dnsmasq and busybox (tools/setup-env installs them)")]

KADEPLOY = [sys.executable, "-m", "kadeploy"]
NODE1_MAC, NODE2_MAC, STRANGER_MAC = "52:54:00:6b:64:01", "52:54:00:6b:64:02", "52:54:00:6b:64:99"
UDHCPC_SCRIPT = str(Path(__file__).resolve().parents[1] / "kadeploy" / "netboot" / "udhcpc.script")


@pytest.fixture
def net():
    lab.cleanup_stale()
    with lab.BootNetwork() as n:
        yield n


@pytest.fixture
def kit(scratch):
    """A state directory, a node table, and image files (small: the HTTP side only
    serves bytes here; the slow tests boot the real image)."""
    image = scratch / "image"
    image.mkdir()
    (image / "vmlinuz").write_bytes(b"K" * 70000)
    (image / "initrd.img").write_bytes(bytes(range(256)) * 4000)
    (image / "localboot.efi").write_bytes(b"E" * 5000)
    nodes = scratch / "nodes.csv"
    nodes.write_text(f"name,mac,address\nnode1,{NODE1_MAC},198.18.0.11\nnode2,{NODE2_MAC},198.18.0.12\n")
    return scratch, image, nodes


class Serve:
    """`kadeploy netboot serve` running in the boot network, its output in a file."""

    def __init__(self, net, scratch, image, nodes, *extra, terminal=False):
        self.out = scratch / f"serve-{time.monotonic_ns()}.log"
        self.argv = [*KADEPLOY, "netboot", "serve", str(image), "-i", "br0", "--nodes", str(nodes),
                     "--state-dir", str(scratch / "state"), "--progress-interval", "60", *extra]
        if not terminal:
            self.proc = net.popen(self.argv, stdout=open(self.out, "w"), stderr=subprocess.STDOUT, text=True)
            return
        # On a terminal (a pty of 160 x 50), what it shows copied into the file.
        import fcntl
        import pty
        import struct
        import termios
        import threading
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
        self.proc = net.popen(self.argv, stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)
        out = open(self.out, "wb", buffering=0)

        def copy():
            try:
                while chunk := os.read(master, 65536):
                    out.write(chunk)
            except OSError:            # EIO: the last process on the pty has exited
                pass
            finally:
                os.close(master)
                out.close()
        threading.Thread(target=copy, daemon=True).start()

    def log(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log()
            m = re.search(pattern, text)
            if m:
                return m.group(0)
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} in the serve log (exit {self.proc.poll()}):\n{self.log()}")


# The image's udhcpc script writes /etc/resolv.conf and sets the host name, as it
# must on a node. A network namespace shares both with this machine, so the client
# runs in its own UTS and mount namespaces, with a private resolv.conf bound over
# the real one: the test never touches the host's name or resolver.
PRIVATE = ("mount --bind \"$1\" /etc/resolv.conf && shift && exec \"$@\"")


def udhcpc(net, ns, *extra, tries=12):
    """busybox udhcpc in ``ns``: one discover a second, ``tries`` of them. Before it offers
    an address from a dynamic range, dnsmasq pings it and answers nothing for about 3 s
    (measured: every discover of those 3 s is answered at once after them), so a client
    that wants a lease is given 12 s, as a PXE ROM would be; one that must get none, 2."""
    fd, resolv = tempfile.mkstemp(prefix="kdn-resolv-")
    os.close(fd)
    try:
        return net.run(["unshare", "--uts", "--mount", "--propagation", "private",
                        "sh", "-c", PRIVATE, "sh", resolv,
                        "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-t", str(tries), "-T", "1",
                        "-s", UDHCPC_SCRIPT, *extra], ns=ns, timeout=60)
    finally:
        os.unlink(resolv)


def http(net, ns, path, method="GET"):
    code = ("import sys, urllib.request\n"
            f"r = urllib.request.urlopen(urllib.request.Request(sys.argv[1], method={method!r}), timeout=10)\n"
            "sys.stdout.buffer.write(r.read())\n")
    p = subprocess.run(net.argv([sys.executable, "-c", code, f"http://{lab.SERVER_IP}:8067{path}"], ns),
                       capture_output=True, timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout


def test_a_node_gets_its_lease_script_and_image_and_then_boots_its_disk(net, kit):
    scratch, image, nodes = kit
    serve = Serve(net, scratch, image, nodes, "--kernel-arg", "console=ttyS0")
    serve.wait_for(r"dnsmasq serves br0 in dhcp mode")
    node = net.add_peer(NODE1_MAC)
    p = udhcpc(net, node)
    assert p.returncode == 0, p.stderr
    assert "lease of 198.18.0.11 obtained" in p.stderr + p.stdout
    # the udhcpc script of the image configured the address
    assert "198.18.0.11/24" in net.run(["ip", "-4", "-o", "addr", "show", "dev", "eth0"], ns=node).stdout
    serve.wait_for(r"node1 52:54:00:6b:64:01: dhcp ack \(.*node1\)")

    assert b"/node/${net0/mac:hexhyp}/boot.ipxe" in http(net, node, "/boot.ipxe")
    script = http(net, node, "/node/52-54-00-6b-64-01/boot.ipxe").decode()
    assert "kernel http://198.18.0.254:8067/vmlinuz " in script
    assert "kadeploy.server=198.18.0.254" in script and "kadeploy.node=node1" in script
    assert http(net, node, "/initrd.img") == (image / "initrd.img").read_bytes()
    serve.wait_for(r"node1 52:54:00:6b:64:01: initrd sent \(1024000 bytes\)")

    # /init's report; the next boot script boots the disk
    http(net, node, "/node/52-54-00-6b-64-01/report?state=installed&detail=ok", method="POST")
    serve.wait_for(r"node1 52:54:00:6b:64:01: installed \(ok\)")
    assert "sanboot --no-describe --drive 0x80" in http(net, node, "/node/52-54-00-6b-64-01/boot.ipxe").decode()
    saved = json.loads((scratch / "state" / "nodes.json").read_text())
    assert list(saved["installed"]) == [NODE1_MAC]
    # the configuration the admin can read is the one dnsmasq runs
    conf = (scratch / "state" / "dnsmasq.conf").read_text()
    assert f"dhcp-host={NODE1_MAC},198.18.0.11,node1,1h" in conf
    # firmware that resets its connection (as OVMF's iPXE does) costs no traceback
    reset = ("import socket, struct\n"
             f"s = socket.create_connection(('{lab.SERVER_IP}', 8067))\n"
             "s.sendall(b'GET /boot.ipxe HTTP/1.1\\r\\n')\n"
             "s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
             "s.close()\n")
    assert subprocess.run(net.argv([sys.executable, "-c", reset], node), timeout=30).returncode == 0
    time.sleep(0.5)
    assert http(net, node, "/boot.ipxe").startswith(b"#!ipxe")    # still serving
    assert "Traceback" not in serve.log()


def test_a_node_outside_the_table_is_ignored_and_logged(net, kit):
    scratch, image, nodes = kit
    serve = Serve(net, scratch, image, nodes)
    serve.wait_for(r"dnsmasq serves br0")
    stranger = net.add_peer(STRANGER_MAC)
    p = udhcpc(net, stranger, tries=2)
    assert p.returncode != 0                              # no lease for it
    serve.wait_for(r"node-525400\w+ 52:54:00:6b:64:99 \(not in the node table\) 52:54:00:6b:64:99: "
                   r"dhcp discover ignored|node-5254006b6499 \(not in the node table\) 52:54:00:6b:64:99: "
                   r"dhcp discover ignored")
    script = http(net, stranger_with_address(net, stranger), "/node/52-54-00-6b-64-99/boot.ipxe").decode()
    assert "not in the node table" in script and "kernel" not in script


def stranger_with_address(net, ns):
    net.run(["ip", "addr", "add", "198.18.0.99/24", "dev", "eth0"], ns=ns)
    return ns


def test_unknown_nodes_installed_by_rule_get_a_dynamic_lease_and_a_name(net, kit):
    scratch, image, nodes = kit
    serve = Serve(net, scratch, image, nodes, "--unknown", "install", "--range", "198.18.0.100,198.18.0.110",
                  "--name-rule", "extra{index:02}")
    serve.wait_for(r"dnsmasq serves br0")
    stranger = net.add_peer(STRANGER_MAC)
    p = udhcpc(net, stranger)
    assert p.returncode == 0, p.stderr
    assert re.search(r"lease of 198\.18\.0\.1(0\d|10) obtained", p.stderr + p.stdout)
    serve.wait_for(r"extra01 \(not in the node table\) 52:54:00:6b:64:99: dhcp ack")
    script = http(net, stranger, "/node/52-54-00-6b-64-99/boot.ipxe").decode()
    assert "kadeploy.node=extra01" in script


def test_a_rack_of_new_nodes_booting_at_once_is_answered_at_once(net, kit):
    """Eight unknown nodes and a known one ask together, each giving up after 8 s. With
    dnsmasq's ping check each new address would silence the server for ~3 s (measured
    with 20 by bench/dhcp_rack.py: 5 got no lease, the others waited 19 s)."""
    scratch, image, nodes = kit
    serve = Serve(net, scratch, image, nodes, "--unknown", "install")
    serve.wait_for(r"dnsmasq serves br0")
    peers = [net.add_peer(f"52:54:00:6b:65:{i:02x}") for i in range(8)] + [net.add_peer(NODE1_MAC)]
    with concurrent.futures.ThreadPoolExecutor(len(peers)) as pool:
        results = list(pool.map(lambda ns: udhcpc(net, ns, tries=8), peers))
    assert [p.returncode for p in results] == [0] * len(peers), [p.stderr for p in results if p.returncode]
    assert "lease of 198.18.0.11 obtained" in results[-1].stderr + results[-1].stdout


def test_proxy_mode_answers_a_pxe_client_beside_the_site_dhcp_server(net, kit, scratch):
    scratch, image, _nodes = kit
    nodes = scratch / "proxy-nodes.csv"
    nodes.write_text(f"name,mac\nnode1,{NODE1_MAC}\n")
    # The site's own DHCP server, in its own namespace on the same bridge.
    site = net.add_peer("52:54:00:6b:64:fe", "198.18.0.1/24")
    site_log = scratch / "site-dhcp.log"
    net.popen(["dnsmasq", "--keep-in-foreground", "--port=0", "--interface=eth0", "--bind-interfaces",
               "--dhcp-range=198.18.0.50,198.18.0.60,255.255.255.0,1h", "--log-dhcp", "--log-facility=-",
               "--pid-file=", f"--dhcp-leasefile={scratch}/site.leases"],
              ns=site, stdout=subprocess.DEVNULL, stderr=open(site_log, "w"))
    serve = Serve(net, scratch, image, nodes, "--mode", "proxy")
    serve.wait_for(r"dnsmasq serves br0 in proxy mode")
    node = net.add_peer(NODE1_MAC)
    # A plain DHCP client gets its address from the site's server, and the proxy keeps quiet.
    p = udhcpc(net, node)
    assert p.returncode == 0, p.stderr
    assert re.search(r"lease of 198\.18\.0\.5\d obtained from 198\.18\.0\.1,", p.stderr + p.stdout)
    assert "pxe proxy" not in serve.log()
    # A PXE client (vendor class PXEClient, architecture 0: BIOS) also gets the proxy's
    # offer: no address in it (0.0.0.0), only the boot information. A PXE ROM merges the
    # two offers; udhcpc takes whichever comes first, so only the proxy's log tells.
    udhcpc(net, node, "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000", tries=2)
    serve.wait_for(r"node1 52:54:00:6b:64:01: pxe proxy")
    assert "dhcp-range=198.18.0.0,proxy" in (scratch / "state" / "dnsmasq.conf").read_text()


def test_missing_image_is_a_clear_error_at_start_up(net, kit):
    scratch, image, nodes = kit
    (image / "initrd.img").unlink()
    p = net.run([*KADEPLOY, "netboot", "serve", str(image), "-i", "br0", "--nodes", str(nodes),
                 "--state-dir", str(scratch / "state")], timeout=60)
    assert p.returncode == 64
    assert p.stderr.strip().splitlines() == [
        f"kadeploy: error: {image}/initrd.img is missing or empty: build the image first "
        f"(kadeploy netboot build {image})"]


def test_a_second_dhcp_server_on_the_port_is_a_clear_error(net, kit):
    scratch, image, nodes = kit
    other = net.popen(["dnsmasq", "--keep-in-foreground", "--port=0", "--interface=br0",
                       "--dhcp-range=198.18.0.50,198.18.0.60,1h", "--pid-file=",
                       f"--dhcp-leasefile={scratch}/other.leases"],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while "dnsmasq" not in net.run(["ss", "-H", "-lunp", "sport = :67"]).stdout:
        assert time.monotonic() < deadline and other.poll() is None, "the other dnsmasq did not start"
        time.sleep(0.1)
    p = net.run([*KADEPLOY, "netboot", "serve", str(image), "-i", "br0", "--nodes", str(nodes),
                 "--state-dir", str(scratch / "state")], timeout=60)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert re.fullmatch(rf"kadeploy: error: UDP port 67 \(DHCP\) is already taken by dnsmasq \(pid {other.pid}\): "
                        r"stop it first .*", lines[0])


def test_max_transfers_makes_the_other_nodes_wait_their_turn(net, kit):
    scratch, image, nodes = kit
    (image / "initrd.img").write_bytes(bytes(range(256)) * (16 * 1024))      # 4 MiB
    serve = Serve(net, scratch, image, nodes, "--max-transfers", "1")
    serve.wait_for(r"dnsmasq serves br0")
    peers = [net.add_peer(mac) for mac in (NODE1_MAC, NODE2_MAC)]
    for ns in peers:
        assert udhcpc(net, ns).returncode == 0
    # 8 Mbit/s towards each node: one transfer takes 4 s, time for the second node's
    # fetch (a new interpreter) to ask while the first one's runs, even on a loaded machine
    for port in ("v0", "v1"):
        subprocess.run(["tc", "-n", net.ns, "qdisc", "add", "dev", port, "root", "tbf",
                        "rate", "8mbit", "burst", "32k", "latency", "400ms"], check=True)
    code = ("import sys, urllib.request\n"
            "data = urllib.request.urlopen(sys.argv[1], timeout=60).read()\n"
            "print(len(data))\n")
    url = f"http://{lab.SERVER_IP}:8067/initrd.img"
    fetches = [net.popen([sys.executable, "-c", code, url], ns=ns, stdout=subprocess.PIPE, text=True)
               for ns in peers]
    sizes = [int(p.communicate(timeout=60)[0]) for p in fetches]
    assert sizes == [4 * 1024 * 1024] * 2
    serve.wait_for(r"node\d 52:54:00:6b:64:0\d: initrd queued \(waiting for a free transfer slot\)")
    log = serve.log()
    sent = [m.start() for m in re.finditer(r"initrd sent", log)]
    queued = log.index("initrd queued")
    starts = [m.start() for m in re.finditer(r": initrd \(\d+ bytes\)", log)]
    # the waiting node started only after the first one had finished
    assert len(sent) == 2 and len(starts) == 2 and queued < sent[0] < starts[1]


def test_an_install_server_that_fails_as_a_whole_stops_the_kit(net, kit):
    scratch, image, nodes = kit
    manifest = scratch / "broken.toml"
    manifest.write_text("this is [ not a manifest\n")
    p = net.run([*KADEPLOY, "netboot", "serve", str(image), "-i", "br0", "--nodes", str(nodes),
                 "--state-dir", str(scratch / "state"), "--install", str(manifest), "-n", "2"], timeout=120)
    assert p.returncode == 1, p.stderr
    assert "starting the install server: " in p.stderr
    assert f"server --install {manifest} -n 2 --nodes-table {nodes}" in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last == "kadeploy: error: the install server exited with status 64: see its messages above"
    # dnsmasq went with it: the DHCP port is free again
    assert net.run(["ss", "-H", "-lun", "sport = :67"]).stdout.strip() == ""


def empty_tree_manifest(scratch: Path) -> Path:
    """A one-partition manifest whose source is an empty tree (what --install needs)."""
    source = scratch / "root"
    source.mkdir()
    manifest = scratch / "manifest.toml"
    manifest.write_text('[disk]\ntable = "gpt"\n\n[[partition]]\nname = "root"\nsize = "fill"\n'
                        f'fs = "ext4"\nmount = "/"\nsource = {{ tar = "{source}" }}\n')
    return manifest


def test_the_install_servers_progress_lists_a_node_from_its_first_dhcp_request_on(net, kit):
    """The README's one command (`serve --install`): the install server started beside
    the kit lists a node that has only asked for DHCP, with its boot step, before any
    client registers; its step follows the node; once it registers, the server's own
    row (registered) replaces it."""
    scratch, image, nodes = kit
    manifest = empty_tree_manifest(scratch)
    serve = Serve(net, scratch, image, nodes, "--install", str(manifest), "-n", "2",
                  "--progress-interval", "0.5")
    serve.wait_for(r"waiting for 2 client\(s\)", timeout=60)
    assert f"--boot-states {scratch}/state/nodes.json --progress-interval 0.5" in serve.log()
    progress = r"ka-d-server: progress: [^\n]*"
    first = serve.wait_for(progress)
    assert "booting" not in first and "registered" not in first       # nobody seen yet

    node = net.add_peer(NODE1_MAC)
    p = udhcpc(net, node)
    assert p.returncode == 0, p.stderr
    line = serve.wait_for(r"ka-d-server: progress: [^\n]*nodes: 1 booting; booting: node1 \(dhcp ack\)")
    assert "registered" not in serve.log().split(line)[0] + line       # before any client registered
    assert "node2" not in line                                         # not seen: not listed

    http(net, node, "/node/52-54-00-6b-64-01/boot.ipxe")
    http(net, node, "/vmlinuz")
    serve.wait_for(r"ka-d-server: progress: [^\n]*booting: node1 \(kernel sent\)")

    # A real client registers from the node's address: the server's row takes over.
    client = net.popen([*KADEPLOY, "client", "-h", lab.SERVER_IP, "-e", "cat >/dev/null"], ns=node,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    serve.wait_for(r"ka-d-server: progress: [^\n]*nodes: 1 registered\n")
    assert client.poll() is None                                       # waiting for the second node
    assert "Traceback" not in serve.log()


def test_on_a_terminal_the_kit_logs_to_a_file_beside_the_install_servers_table(net, kit):
    """With --install on a terminal the install server draws its live table there: the
    kit's own lines would break it, so they go to STATE_DIR/kit.log; the table shows
    the node's boot step."""
    scratch, image, nodes = kit
    manifest = empty_tree_manifest(scratch)
    serve = Serve(net, scratch, image, nodes, "--install", str(manifest), "-n", "2", terminal=True)
    kit_log = scratch / "state" / "kit.log"
    serve.wait_for(f"this kit's log goes to {kit_log}", timeout=60)
    node = net.add_peer(NODE1_MAC)
    assert udhcpc(net, node).returncode == 0
    deadline = time.monotonic() + 30
    while "node1 52:54:00:6b:64:01: dhcp ack" not in kit_log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "node1 52:54:00:6b:64:01: dhcp ack" in kit_log.read_text()
    assert "starting the install server" in kit_log.read_text()
    serve.wait_for(r"node1[^\n]*booting[^\n]*dhcp ack", timeout=30)     # the server's table
    shown = serve.log()
    assert "kadeploy netboot: node1" not in shown and "kadeploy netboot: starting" not in shown
    assert "Traceback" not in shown
