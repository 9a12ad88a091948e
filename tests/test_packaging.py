"""What `pip install` puts on a machine: the package, the compiled relay where a
compiler is, the man pages under share/man/man1, the three commands."""
import subprocess
import sys
import zipfile

import pytest
from deploy import REPO


@pytest.mark.timeout(600)
def test_wheel_carries_man_pages_commands_and_the_relay(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "-q", "-w", str(tmp_path), REPO], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel, = tmp_path.glob("kadeploy-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for page in ("ka-d-server.1", "ka-d-client.1", "kadeploy.1", "kadeploy-push.1"):
        assert any(n.endswith(f".data/data/share/man/man1/{page}") for n in names), names
    assert any(n.startswith("kadeploy/relay/_relay.") and n.endswith(".so") for n in names)
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    for cmd in ("ka-d-server", "ka-d-client", "kadeploy"):
        assert f"{cmd} = kadeploy.entry:" in entry_points
