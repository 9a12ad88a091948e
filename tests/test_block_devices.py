"""A raw partition deployed onto real block devices (loop devices stand in for
disks), the original's `dd if=... | ... | dd of=...` recipe."""
import hashlib
import os
import shutil
import subprocess

import pytest
from deploy import Deployment

SIZE_MIB = 48


@pytest.fixture
def loop_devices(tmp_path):
    if os.geteuid() != 0 or shutil.which("losetup") is None:
        pytest.skip("needs root and losetup for loop devices")
    made = []

    def attach(path):
        dev = subprocess.run(["losetup", "--find", "--show", str(path)], capture_output=True,
                             text=True)
        if dev.returncode != 0:
            pytest.skip(f"no loop device: {dev.stderr.strip()}")
        made.append(dev.stdout.strip())
        return made[-1]

    yield attach
    for dev in made:
        subprocess.run(["losetup", "--detach", dev])


def digest_device(dev, size):
    h = hashlib.sha256()
    with open(dev, "rb") as f:
        left = size
        while left:
            block = f.read(min(left, 1 << 20))
            assert block, f"{dev} is shorter than {size}"
            h.update(block)
            left -= len(block)
    return h.hexdigest()


def test_partition_image_onto_two_disks(loop_devices, scratch, tmp_path):
    size = SIZE_MIB << 20
    source = scratch / "source.img"
    with open(source, "wb") as f:            # a "partition" with data and holes
        for i in range(SIZE_MIB):
            f.write(os.urandom(1 << 20) if i % 3 else bytes(1 << 20))
    src_dev = loop_devices(source)
    disks = []
    for i in (1, 2):
        img = scratch / f"disk{i}.img"
        with open(img, "wb") as f:
            f.truncate(size)
        disks.append(loop_devices(img))
    dep = Deployment(str(tmp_path))
    try:
        server = dep.server("-n", "2", "-e", f"dd if={src_dev} bs=1M status=none")
        clients = [dep.client("-h", "127.0.0.1", "-e", f"dd of={d} bs=1M conv=fsync status=none")
                   for d in disks]
        assert server.wait(120) == 0, server.err
        assert [c.wait(60) for c in clients] == [0, 0], [c.err for c in clients]
    finally:
        dep.close()
    want = digest_device(src_dev, size)
    assert [digest_device(d, size) for d in disks] == [want, want]
