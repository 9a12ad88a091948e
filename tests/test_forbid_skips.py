"""KADEPLOY_FORBID_SKIPS: a missing capability fails the run, a case that does not
apply is still skipped (tests/forbid_skips.py), checked on a real pytest run."""
import os
import subprocess
import sys

TESTS = os.path.dirname(os.path.abspath(__file__))
CASES = '''
import pytest
from forbid_skips import not_applicable

def test_needs_a_capability():
    pytest.skip("needs network namespaces: not root")

@pytest.mark.skipif(True, reason="needs root")
def test_marked_skip():
    pass

def test_not_applicable():
    pytest.skip(not_applicable("copy never refuses"))

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False

def test_runs():
    pass
'''


def run_cases(tmp_path, forbid):
    (tmp_path / "test_cases.py").write_text(CASES)
    env = dict(os.environ, PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")   # only forbid_skips: a quick run
    env.pop("KADEPLOY_FORBID_SKIPS", None)
    if forbid is not None:
        env["KADEPLOY_FORBID_SKIPS"] = forbid
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "forbid_skips", "-p", "no:cacheprovider",
                          "-rA", "-q", "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    outcomes = {}
    for line in run.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL") and "::" in rest:
            outcomes[rest.split("::")[1].split(" ")[0]] = word
        elif word == "SKIPPED" and "test_cases.py:" in rest:   # "SKIPPED [1] test_cases.py:7: reason"
            outcomes.setdefault("skipped", []).append(rest)
    return run, outcomes


def test_without_the_variable_skips_are_skips(tmp_path):
    run, out = run_cases(tmp_path, None)
    assert run.returncode == 0, run.stdout
    assert "1 passed, 3 skipped, 1 xfailed in" in run.stdout, run.stdout


def test_with_the_variable_a_missing_capability_fails(tmp_path):
    run, out = run_cases(tmp_path, "1")
    assert run.returncode == 1, run.stdout
    # A skip in the test's body fails it; one in its set-up (a skipif mark, a fixture
    # such as vcluster) makes it an error: either way the run fails.
    assert out["test_needs_a_capability"] == "FAILED"
    assert out["test_marked_skip"] == "ERROR"
    assert "KADEPLOY_FORBID_SKIPS=1 forbids this skip (a capability is missing): needs root" in run.stdout
    assert out["test_expected_failure"] == "XFAIL" and out["test_runs"] == "PASSED"
    assert "1 failed, 1 passed, 1 skipped, 1 xfailed, 1 error in" in run.stdout, run.stdout
