"""Slow, end to end, the README recipe: `kadeploy netboot serve IMAGE -i br0 --nodes
nodes.csv --install manifest.toml -n 2` in a namespace with a bridge, and two qemu
machines with empty disks on its taps. They PXE-boot the install system, install
themselves from the golden Debian image (mounted here, as tests/test_install_netns.py
does) through the chain, reboot, get the local-boot script from iPXE (they do not
install again), boot their own disk and print their host name on the serial console.
Each step's time is measured and printed.

node1 boots by BIOS (SeaBIOS, the iPXE ROM of its NIC), node2 by UEFI (OVMF's PXE,
ipxe.efi). The manifest's loader is ``grub``: each node installs the grub of the
firmware that started its install system, so node1 gets grub-bios on its disk and
node2 mounts its ESP (vfat: the install system's kernel has it, this machine's does
not) and gets grub-efi on the removable path EFI/BOOT/BOOTX64.EFI; after the install,
iPXE chains the kit's localboot.efi, which starts that loader from the disk. The install server's progress lines list the nodes while they
boot, before they register.
"""
from __future__ import annotations

import json
import re
import subprocess
import time

import pytest

import installkit as K
import netbootlab as lab
from test_install_netns import golden, write  # noqa: F401  (fixture)
from test_netboot_boot import KADEPLOY, image, net  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.netns, pytest.mark.timeout(1800)]

MACHINES = [("node1", "52:54:00:6b:64:01", "198.18.0.11", "bios"),
            ("node2", "52:54:00:6b:64:02", "198.18.0.12", "uefi")]

# What each machine's console says, in order, and the name of the step it ends.
CONSOLE_STEPS = [
    ("install system", r"kadeploy-init: started"),
    ("network", r"kadeploy-init: network up on \w+: 198\.18\.0\.1[12]/24"),
    ("ka-d-client", r"kadeploy-init: running: ka-d-client --install"),
    ("installed", r"kadeploy-init: install done"),
    ("local boot", r"kadeploy: node\d is installed; booting from its disk"),
    ("login prompt", r"\bnode\d login:"),
]


def watch_consoles(machines, times, timeout: float) -> None:
    """Both machines at once: the seconds from power-on at which each console first
    showed each step, in order."""
    deadline = time.monotonic() + timeout
    while True:
        for m in machines:
            done = times[m.name]
            if len(done) < len(CONSOLE_STEPS):
                step, pattern = CONSOLE_STEPS[len(done)]
                if re.search(pattern, m.console()):
                    done[step] = round(time.monotonic() - m.started, 1)
                elif m.proc.poll() is not None:
                    raise AssertionError(f"{m.name}: qemu exited before {step}:\n{m.console()[-3000:]}")
        if all(len(times[m.name]) == len(CONSOLE_STEPS) for m in machines):
            return
        assert time.monotonic() < deadline, f"steps seen within {timeout:.0f} s: {times}"
        time.sleep(0.5)


def test_readme_recipe_installs_two_machines_that_boot_their_disks(image, net, golden, scratch):  # noqa: F811
    accel = lab.qemu_accel(image / "vmlinuz")
    nodes = write(scratch / "nodes.csv",
                  "name,mac,address\n" + "".join(f"{n},{m},{a}\n" for n, m, a, _fw in MACHINES))
    manifest = write(scratch / "manifest.toml", K.manifest_text(golden, loader="grub"))
    serve_log = scratch / "serve.log"
    started = time.monotonic()
    # The README's command, plus the test's own state directory and the serial console.
    serve = net.popen([*KADEPLOY, "netboot", "serve", str(image), "-i", "br0", "--nodes", nodes,
                       "--install", manifest, "-n", "2", "--kernel-arg", "console=ttyS0,115200",
                       "--state-dir", str(scratch / "state"), "--timeout", "1200",
                       "--progress-interval", "20"],
                      stdout=open(serve_log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while "starting the install server" not in serve_log.read_text():
        assert serve.poll() is None and time.monotonic() < deadline, serve_log.read_text()
        time.sleep(0.2)
    machines = [lab.Machine(net, scratch, name, mac, firmware=fw, accel=accel)
                for name, mac, _a, fw in MACHINES]
    for m in machines:
        m.start()
    times = {m.name: {} for m in machines}
    try:
        watch_consoles(machines, times, 1200)
        status = serve.wait(120)
    finally:
        log = serve_log.read_text()
        print(f"\naccel {accel}\n{log}")
        for m in machines:
            print(f"--- {m.name} console tail\n{m.console()[-3000:]}")
    assert status == 0, log
    assert "the install server is done (status 0)" in log
    for name, mac, _addr, _fw in MACHINES:
        steps = [line.split(f"{mac}: ", 1)[1] for line in log.splitlines() if f" {name} {mac}: " in line]
        # one install, then the local-boot script: the node did not install again
        assert sum(s.startswith("ipxe script (install)") for s in steps) == 1, steps
        assert sum(s.startswith("installed") for s in steps) == 1, steps
        after = steps[[i for i, s in enumerate(steps) if s.startswith("installed")][0]:]
        assert any(s.startswith("ipxe script (local)") for s in after), steps
        assert not any(s.startswith(("kernel sent", "initrd sent")) for s in after), steps
    for m in machines:
        console = m.console()
        assert f"{m.name} login:" in console
        # the clone's own kernel, named by the node table, not the install system
        assert re.search(r"Debian GNU/Linux 12 " + m.name + r" ttyS0", console), console[-2000:]
        # the clone's kernel was started by the firmware the machine has, from its disk
        clone = console.split("booting from its disk", 1)[1]
        assert ("efi: EFI v" in clone) == (m.firmware == "uefi"), clone[:3000]
    # each node installed the boot loader of its firmware; node2 mounted its ESP to do so
    loaders = re.findall(r"boot loader +ok .*  (grub-\w+ on /dev/\w+ \(the node booted by \w+\))", log)
    assert sorted(loaders) == ["grub-bios on /dev/vda (the node booted by BIOS)",
                               "grub-efi on /dev/vda (the node booted by UEFI)"], log
    assert len(re.findall(r"mount esp +ok .* /boot/efi", log)) == 2, log
    # the install server's progress listed the nodes while they booted, before they registered
    assert re.search(r"ka-d-server: progress: [^\n]*; booting: node\d \(", log), log
    total = round(time.monotonic() - started, 1)
    print("seconds from power-on, per machine: " + json.dumps(times) + f"; whole recipe {total} s")
