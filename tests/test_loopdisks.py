"""The sweep of loop disks that a killed run left attached (tests/loopdisks.py)."""
import os
import shutil
import subprocess

import pytest

import loopdisks


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


@pytest.fixture
def as_root():
    if os.geteuid() != 0 or shutil.which("losetup") is None or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root, losetup and mkfs.ext4")


def attach(path: str) -> str:
    with open(path, "wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", path], check=True)
    return subprocess.run(["losetup", "--find", "--show", path], check=True,
                          capture_output=True, text=True).stdout.strip()


def test_a_dead_runs_mounted_loop_disk_is_released_and_a_live_ones_is_not(tmp_path, as_root):
    dead = str(tmp_path / f"kdi-left.{dead_pid()}.img")
    live = loopdisks.image_path(str(tmp_path), "mine")
    dead_dev, live_dev = attach(dead), attach(live)
    where = tmp_path / "mnt"
    where.mkdir()
    try:
        subprocess.run(["mount", dead_dev, str(where)], check=True)
        os.unlink(dead)                     # as pytest's rotation of old base dirs does
        assert {dead_dev, live_dev} <= {dev for dev, _ in loopdisks.attached()}
        assert loopdisks.sweep_dead_runs() == [dead_dev]
        devices = {dev for dev, _ in loopdisks.attached()}
        assert dead_dev not in devices and live_dev in devices
        assert not os.path.ismount(where)
        assert loopdisks.sweep_own() == [live_dev]
        assert live_dev not in {dev for dev, _ in loopdisks.attached()}
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)
        for dev in (dead_dev, live_dev):
            subprocess.run(["losetup", "--detach", dev], capture_output=True)
