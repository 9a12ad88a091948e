"""Shared fixtures: tmpfs scratch dirs, the hard tree, virtual clusters.

Tests marked ``@pytest.mark.netns`` are skipped, with the reason, when this
process cannot create network namespaces (not root, no iproute2, ...); with
KADEPLOY_FORBID_SKIPS=1 (CI) such skips fail instead (tests/forbid_skips.py).
"""

from __future__ import annotations

import contextlib
import os

import pytest
from hypothesis import settings

# HYPOTHESIS_PROFILE=long runs the protocol and planning fuzzers much longer (see
# docs/fuzzing.md); CI uses the default profile.
settings.register_profile("ci", max_examples=400, deadline=None)
settings.register_profile("long", max_examples=50_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

import loopdisks
from forbid_skips import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401 (hooks)
from treegen import make_hard_tree

from kadeploy.lab import vcluster as vc


def pytest_sessionstart(session):
    # Remove namespaces, scratch mounts and loop disks of dead runs; live runs are
    # left alone.
    if vc.netns_support() is None:
        vc.cleanup_stale()
    if os.geteuid() == 0:
        loopdisks.sweep_dead_runs()


def pytest_sessionfinish(session, exitstatus):
    # Every loop disk is detached by its test's clean-up; what is still attached
    # here is a leak: detached now, and named.
    if os.geteuid() == 0:
        leaked = loopdisks.sweep_own()
        if leaked:
            print(f"\nconftest: loop devices left attached by the tests, detached now: {' '.join(leaked)}")


def pytest_runtest_setup(item):
    if item.get_closest_marker("netns") is not None:
        reason = vc.netns_support()
        if reason is not None:
            pytest.skip(f"needs network namespaces: {reason}")


@pytest.fixture
def scratch(tmp_path):
    """A fresh empty directory on a private tmpfs (plain tmp_path when not root)."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    with vc.scratch_fs("4g") as path:
        yield path


@pytest.fixture(scope="session")
def hard_tree():
    """The tree of tests/treegen.py (defaults: 64 MiB big file, 2000 small files),
    built once per session on its own tmpfs.  Read-only for tests: copy it to mutate."""
    if os.geteuid() != 0:
        pytest.skip("hard_tree needs root (device nodes, foreign owners, tmpfs)")
    with vc.scratch_fs("1g") as path:
        yield make_hard_tree(path / "src")


@pytest.fixture
def vcluster():
    """A factory: ``vcluster(n, **kw)`` makes an up-and-running VirtualCluster;
    every cluster made is torn down at the end of the test, even on failure."""
    reason = vc.netns_support()
    if reason is not None:
        pytest.skip(f"needs network namespaces: {reason}")
    with contextlib.ExitStack() as stack:
        def make(n_nodes: int, **kw) -> vc.VirtualCluster:
            return stack.enter_context(vc.VirtualCluster(n_nodes, **kw))
        yield make


@pytest.fixture
def net(vcluster, tmp_path):
    """``net(n_hosts, **cluster_kw)`` -> (cluster, Deployment whose commands run in the
    cluster's namespaces: ``where=i`` is node i). Every process is thawed (a test may
    have frozen it) and killed at the end."""
    import signal

    from deploy import Deployment

    made = []

    def make(n_hosts, **kw):
        cluster = vcluster(n_hosts, **kw)
        dep = Deployment(str(tmp_path), loopback=False,
                         wrap=lambda i, argv: ["ip", "netns", "exec", cluster.node(i).ns, *argv])
        made.append(dep)
        return cluster, dep

    yield make
    for dep in made:
        for p in dep.procs:
            try:
                os.killpg(p.popen.pid, signal.SIGCONT)
            except (ProcessLookupError, PermissionError):
                pass
        dep.close()
