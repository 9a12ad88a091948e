"""A CI-sized run of the coverage-guided protocol fuzzer (fuzz/fuzz_protocol.py);
the long run is documented in docs/fuzzing.md."""
import os
import subprocess
import sys

import pytest

HARNESS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fuzz",
                       "fuzz_protocol.py")


def test_protocol_survives_coverage_guided_fuzzing(tmp_path):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    run = subprocess.run([sys.executable, HARNESS, "-runs=30000", "-max_len=2048", "-seed=1",
                          f"-artifact_prefix={tmp_path}/"],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 30000 runs" in run.stderr
