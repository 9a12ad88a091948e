"""CI-sized runs of the coverage-guided fuzzers: the protocol (fuzz/fuzz_protocol.py)
and the files an admin writes (fuzz/fuzz_inputs.py); the long runs are documented in
docs/fuzzing.md."""
import os
import subprocess
import sys

import pytest

FUZZ = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fuzz")
HARNESS = os.path.join(FUZZ, "fuzz_protocol.py")


def test_protocol_survives_coverage_guided_fuzzing(tmp_path):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    run = subprocess.run([sys.executable, HARNESS, "-runs=30000", "-max_len=2048", "-seed=1",
                          f"-artifact_prefix={tmp_path}/"],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 30000 runs" in run.stderr


def test_manifests_and_node_tables_survive_coverage_guided_fuzzing(tmp_path):
    pytest.importorskip("atheris", reason="atheris is not installed (pip install atheris)")
    # -timeout: an input that takes 20 s is a hang (each takes well under a millisecond).
    run = subprocess.run([sys.executable, os.path.join(FUZZ, "fuzz_inputs.py"), "-runs=30000", "-max_len=2048",
                          "-seed=1", "-timeout=20", f"-artifact_prefix={tmp_path}/"],
                         capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 30000 runs" in run.stderr
