"""Slow, end to end: the real image (`kadeploy netboot build`), `kadeploy netboot serve`
with the real dnsmasq in a namespace, and qemu machines with empty disks on taps of
its bridge. One machine boots by BIOS (SeaBIOS and the iPXE ROM of its NIC), one by
UEFI (OVMF's own PXE, which loads ipxe.efi by TFTP); both load the install system over
HTTP and their /init reaches ka-d-client. Every step's time is measured and printed.

The image is built once per source tree and kept under /var/cache/kadeploy-tests
(its debootstrap is cached by package list), so a rerun does not rebuild it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import netbootlab as lab

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path("/var/cache/kadeploy-tests")
KADEPLOY = [sys.executable, "-m", "kadeploy"]

pytestmark = [
    pytest.mark.slow, pytest.mark.netns,
    pytest.mark.timeout(2400),   # an image build (minutes) and two TCG boots on a shared machine
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (debootstrap, namespaces, taps)"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in ("qemu-system-x86_64", "dnsmasq", "debootstrap")),
                       reason="needs qemu-system-x86, dnsmasq and debootstrap (tools/setup-env installs them)"),
]


def source_key() -> str:
    """A digest of everything that goes into the image from this tree."""
    h = hashlib.sha256()
    for path in sorted([*ROOT.glob("kadeploy/**/*.py"), *ROOT.glob("kadeploy/**/*.pyx"),
                        *ROOT.glob("kadeploy/netboot/*.sh"), *ROOT.glob("kadeploy/netboot/*.script"),
                        ROOT / "pyproject.toml", ROOT / "setup.py"]):
        h.update(str(path.relative_to(ROOT)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def image():
    out = CACHE / f"kdn-image-{source_key()}"
    if not ((out / "build.json").exists() and (out / "initrd.img").exists()):
        started = time.monotonic()
        p = subprocess.run([*KADEPLOY, "netboot", "build", str(out), "--cache", str(CACHE / "kdn-debootstrap")],
                           capture_output=True, text=True, timeout=1500)
        assert p.returncode == 0, p.stderr
        print(f"\nimage built in {time.monotonic() - started:.0f} s: {p.stdout.strip()}")
    report = json.loads((out / "build.json").read_text())
    assert "relay backend" in report["kadeploy"]        # ka-d-client ran in the image's chroot
    return out


@pytest.fixture
def net():
    lab.cleanup_stale()
    with lab.BootNetwork() as n:
        yield n


MACHINES = [("node1", "52:54:00:6b:64:01", "198.18.0.11", "bios"),
            ("node2", "52:54:00:6b:64:02", "198.18.0.12", "uefi")]


def test_the_image_runs_kadeploy_and_its_dependencies_from_byte_code(image):
    """Every Python module of kadeploy and of the dependencies copied beside it has its
    byte code in the initrd, and so has the standard library's asyncio: a node's first
    ka-d-client compiles nothing before it registers."""
    listing = subprocess.run(["sh", "-c", 'zstd -dc "$1" | cpio -t --quiet', "sh", str(image / "initrd.img")],
                             capture_output=True, text=True, check=True).stdout
    names = {n[2:] if n.startswith("./") else n for n in listing.split()}
    init = next(n for n in names if n.endswith("/dist-packages/kadeploy/__init__.py"))
    site = init[:-len("/kadeploy/__init__.py")]
    tag = "cpython-3" + re.search(r"python3\.(\d+)/", site)[1]
    sources = [n for n in names if n.startswith(site + "/") and n.endswith(".py")]
    sources.append(next(n for n in names if re.fullmatch(r"usr/lib/python3\.\d+/asyncio/base_events\.py", n)))

    def byte_code(source: str) -> str:
        head, name = source.rsplit("/", 1)
        return f"{head}/__pycache__/{name[:-3]}.{tag}.pyc"
    missing = [s for s in sources if byte_code(s) not in names]
    assert len(sources) > 100 and not missing, missing[:10]


def test_two_machines_pxe_boot_the_install_system_and_reach_ka_d_client(image, net, scratch):
    accel = lab.qemu_accel(image / "vmlinuz")
    nodes = scratch / "nodes.csv"
    nodes.write_text("name,mac,address\n" + "".join(f"{n},{m},{a}\n" for n, m, a, _fw in MACHINES))
    serve_log = scratch / "serve.log"
    serve = net.popen([*KADEPLOY, "netboot", "serve", str(image), "-i", "br0", "--nodes", str(nodes),
                       "--state-dir", str(scratch / "state"), "--kernel-arg", "console=ttyS0,115200",
                       "--exit-when-done", "--timeout", "900", "--progress-interval", "30"],
                      stdout=open(serve_log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while "dnsmasq serves br0" not in serve_log.read_text():
        assert serve.poll() is None and time.monotonic() < deadline, serve_log.read_text()
        time.sleep(0.2)

    machines = [lab.Machine(net, scratch, name, mac, firmware=fw, accel=accel) for name, mac, _a, fw in MACHINES]
    for m in machines:
        m.start()
    times = {}
    try:
        for m in machines:
            t = {"init": m.wait_for(r"kadeploy-init: started", 600)}
            t["network"] = m.wait_for(r"kadeploy-init: network up on \w+: 198\.18\.0\.1[12]/24", 300)
            t["ka-d-client"] = m.wait_for(r"kadeploy-init: running: ka-d-client --install -h 198\.18\.0\.254", 300)
            times[m.name] = t
        for m in machines:
            m.wait_exit(300)
        # ka-d-client ran in the guest and its outcome reached the server
        assert serve.wait(60) in (0, 1, 2), serve_log.read_text()
    finally:
        log = serve_log.read_text()
        print(f"\naccel {accel}\n" + log)
        for m in machines:
            print(f"--- {m.name} console tail\n{m.console()[-2500:]}")
    for m in machines:
        console = m.console()
        assert re.search(r"kadeploy-init: ka-d-client \(kadeploy\) \S+ protocol kadeploy/\d+ relay backend", console)
        # the kernel command line came from the node's own iPXE script
        assert f"kadeploy.node={m.name}" in console or m.name in log
    # every step of each node, from its first DHCP request on, in the serve log
    for name, mac, addr, fw in MACHINES:
        mine = [line for line in log.splitlines() if f" {name} {mac}: " in line]
        steps = [line.split(f"{mac}: ", 1)[1] for line in mine]
        assert any(s.startswith("dhcp ack") for s in steps), mine
        if fw == "uefi":   # OVMF's PXE got iPXE by TFTP, then iPXE asked again as iPXE
            assert "tftp sent (ipxe.efi)" in steps, mine
            assert any(s.startswith("dhcp ack (from iPXE") for s in steps), mine
        for step in ("ipxe script (install)", "kernel sent (", "initrd sent (", "network (", "installing ("):
            assert any(s.startswith(step) for s in steps), (step, mine)
        assert any(s.startswith(("installed", "failed")) for s in steps), mine
    print("seconds from power-on: " + json.dumps(times))


def test_an_installed_node_that_reboots_boots_its_disk_not_the_installer(image, net, scratch):
    """The kit's saved state says node1 is installed (as its /init reports at the end of
    an install): at its next PXE boot iPXE gets the local-boot script, so the machine
    leaves iPXE for its disk, and no kernel or initrd is sent. The disk is empty here,
    so SeaBIOS then finds nothing to boot, which its console says."""
    accel = lab.qemu_accel(image / "vmlinuz")
    name, mac, addr, _fw = MACHINES[0]
    nodes = scratch / "nodes.csv"
    nodes.write_text(f"name,mac,address\n{name},{mac},{addr}\n")
    state = scratch / "state"
    state.mkdir()
    (state / "nodes.json").write_text(json.dumps({"installed": {mac: time.time()}}))
    serve_log = scratch / "serve.log"
    serve = net.popen([*KADEPLOY, "netboot", "serve", str(image), "-i", "br0", "--nodes", str(nodes),
                       "--state-dir", str(state), "--progress-interval", "30"],
                      stdout=open(serve_log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while "dnsmasq serves br0" not in serve_log.read_text():
        assert serve.poll() is None and time.monotonic() < deadline, serve_log.read_text()
        time.sleep(0.2)
    m = lab.Machine(net, scratch, name, mac, firmware="bios", accel=accel)
    m.start()
    try:
        t_local = m.wait_for(rf"kadeploy: {name} is installed; booting from its disk", 300)
        t_nodisk = m.wait_for(r"No bootable device|Boot failed: not a bootable disk", 300)
    finally:
        print(f"\n{serve_log.read_text()}\n--- console tail\n{m.console()[-2000:]}")
    log = serve_log.read_text()
    assert f"{name} {mac}: ipxe script (local)" in log
    assert "no boot script from the server" not in m.console()
    assert "kernel" not in log.split("ipxe script (local)", 1)[1]
    assert ": kernel (" not in log and ": initrd (" not in log
    print(f"local-boot script after {t_local:.1f} s, left iPXE for the disk after {t_nodisk:.1f} s")


def test_proxy_mode_beside_the_site_dhcp_server_boots_a_pxe_machine(image, net, scratch):
    """The site's DHCP server (a plain dnsmasq, no PXE) hands out the address; the kit
    in proxy mode answers the PXE requests only; the machine's iPXE puts the two
    together and loads the install system from the kit."""
    accel = lab.qemu_accel(image / "vmlinuz")
    name, mac, _addr, _fw = MACHINES[0]
    nodes = scratch / "nodes.csv"
    nodes.write_text(f"name,mac\n{name},{mac}\n")
    site = net.add_peer("52:54:00:6b:64:fe", "198.18.0.1/24")
    net.popen(["dnsmasq", "--keep-in-foreground", "--port=0", "--interface=eth0", "--bind-interfaces",
               "--dhcp-range=198.18.0.50,198.18.0.60,255.255.255.0,1h", "--pid-file=",
               f"--dhcp-leasefile={scratch}/site.leases"], ns=site,
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    serve_log = scratch / "serve.log"
    serve = net.popen([*KADEPLOY, "netboot", "serve", str(image), "-i", "br0", "--nodes", str(nodes),
                       "--mode", "proxy", "--state-dir", str(scratch / "state"),
                       "--kernel-arg", "console=ttyS0,115200", "--progress-interval", "30"],
                      stdout=open(serve_log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while "dnsmasq serves br0 in proxy mode" not in serve_log.read_text():
        assert serve.poll() is None and time.monotonic() < deadline, serve_log.read_text()
        time.sleep(0.2)
    m = lab.Machine(net, scratch, name, mac, firmware="bios", accel=accel)
    m.start()
    try:
        t_net = m.wait_for(r"net0: 198\.18\.0\.5\d/255\.255\.255\.0", 300)    # the site's address
        t_script = m.wait_for(rf"kadeploy: {name} \({mac}\) boots the install system", 300)
        t_init = m.wait_for(r"kadeploy-init: network up on \w+: 198\.18\.0\.5\d/24", 600)
    finally:
        print(f"\n{serve_log.read_text()}\n--- console tail\n{m.console()[-2500:]}")
    log = serve_log.read_text()
    assert f"{name} {mac}: pxe proxy" in log
    assert f"{name} {mac}: ipxe script (install)" in log and f"{name} {mac}: initrd sent (" in log
    print(f"site address after {t_net:.1f} s, install script after {t_script:.1f} s, "
          f"install system on the network after {t_init:.1f} s")
