"""KADEPLOY_FORBID_SKIPS=1 turns a skipped test into a failed one, so that CI cannot go
green by running nothing (a test needing root, namespaces, a tool or a relay backend
that was missing). Loaded by tests/conftest.py; also usable alone (``-p forbid_skips``).

Two kinds of skip are told apart by the reason: "capability missing" (any reason) fails
under the variable; "not applicable" (the reason starts with ``not applicable: ``: the
case does not exist for this parameter, e.g. copy never refuses a splice; written
``pytest.skip(not_applicable(...))``) stays a skip.
An expected failure (xfail) is not a skip and is left alone.
"""
from __future__ import annotations

import os

import pytest

ENV_FORBID_SKIPS = "KADEPLOY_FORBID_SKIPS"
NOT_APPLICABLE = "not applicable: "


def skips_forbidden() -> bool:
    return os.environ.get(ENV_FORBID_SKIPS, "").strip().lower() not in ("", "0", "no", "false")


def not_applicable(reason: str) -> str:
    """The reason of a skip for a case that does not exist (not a missing capability),
    which CI allows: ``pytest.skip(not_applicable("copy never refuses"))``."""
    return NOT_APPLICABLE + reason


def _skip_reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def _forbid(report) -> None:
    if not (report.skipped and skips_forbidden()) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report)
    if reason.startswith(NOT_APPLICABLE):
        return
    report.outcome = "failed"
    report.longrepr = f"{ENV_FORBID_SKIPS}=1 forbids this skip (a capability is missing): {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _forbid(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _forbid(outcome.get_result())
