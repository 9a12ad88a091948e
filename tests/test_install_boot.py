"""A clone boots: one node installed by ka-d-client --install (BIOS, grub-install
onto the loop disk), then qemu boots the installed disk and the guest prints its
own host name on the serial console. Slow (a TCG boot takes about half a minute)."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

import installkit as K
import loopdisks
from deploy import load_report
from test_install_netns import disks, golden, write  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.netns, pytest.mark.slow]
QEMU = "qemu-system-x86_64"


def kvm_works(tmp_path) -> bool:
    """/dev/kvm can exist and still hang a guest: boot a boot sector that writes to
    the serial port, under KVM, with a deadline."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    code = bytes([0xBA, 0xF8, 0x03])                      # mov dx, 0x3f8
    for ch in b"KVMOK\n":
        code += bytes([0xB0, ch, 0xEE])                    # mov al, ch; out dx, al
    code += bytes([0xFA, 0xF4])                            # cli; hlt
    sector = code.ljust(510, b"\0") + b"\x55\xaa"
    img = tmp_path / "kvm-probe.img"
    img.write_bytes(sector)
    try:
        r = subprocess.run([QEMU, "-accel", "kvm", "-display", "none", "-serial", "stdio", "-m", "16",
                            "-monitor", "none", "-drive", f"file={img},format=raw"],
                           capture_output=True, timeout=10)
    except subprocess.TimeoutExpired:
        return False
    return b"KVMOK" in r.stdout


def test_a_clone_boots_and_names_itself(net, golden, disks, tmp_path):  # noqa: F811
    if shutil.which(QEMU) is None:
        pytest.skip("no qemu-system-x86 (tools/setup-env installs it)")
    cluster, dep = net(2)
    dep.env["TMPDIR"] = str(tmp_path)   # what a killed node leaves behind stays here
    (disk,) = disks(1)
    image = loopdisks.image_path(str(tmp_path), "t0")   # the file behind the loop disk
    manifest = write(tmp_path / "m.toml", K.manifest_text(golden))
    report = str(tmp_path / "report.json")
    dep.server("-n", "1", "--install", manifest, "--report", report, where=0)
    dep.client("-h", cluster.node(0).addr, "--install", "--disk", disk, where=1)
    assert dep.wait_all(300) == [0, 0], [p.err for p in dep.procs]
    assert load_report(report)["nodes"][0]["status"] == "ok"
    subprocess.run(["sync"])
    accel = "kvm" if kvm_works(tmp_path) else "tcg"
    console = tmp_path / "console.log"
    qemu = subprocess.Popen([QEMU, "-accel", accel, "-m", "768", "-display", "none", "-monitor", "none",
                             "-serial", f"file:{console}", "-snapshot",
                             "-drive", f"file={image},format=raw,if=virtio"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        text = ""
        while time.monotonic() < deadline and qemu.poll() is None:
            time.sleep(2)
            text = console.read_text(errors="replace") if console.exists() else ""
            if "node01 login:" in text:
                break
        assert "node01 login:" in text, f"no login prompt of node01 ({accel}):\n{text[-3000:]}"
    finally:
        qemu.kill()
        qemu.wait()
