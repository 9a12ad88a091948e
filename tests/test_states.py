"""States as enums: a node's state on the server, the report's verdict, and that each
still reads as the word the logs, the live table and the JSON report have always shown."""
from __future__ import annotations

import json

import pytest

from kadeploy.control.registry import Node
from kadeploy.core import protocol as P
from kadeploy.core.states import PLACED_ALIVE, RECEIVING, NodeState, Verdict
from kadeploy.core.topology import NodeInfo
from kadeploy.relay.result import Ended
from kadeploy.view.progress import NodeView, summary_line
from kadeploy.view.report import NodeReport, Report


@pytest.mark.parametrize("member", [*NodeState, *Verdict, *P.State, *Ended])
def test_a_state_reads_as_its_word(member):
    word = member.value
    assert str(member) == f"{member}" == "%s" % member == word
    assert f"[{member:>12}]" == f"[{word:>12}]"
    assert json.dumps({"s": member}) == json.dumps({"s": word})
    assert member == word


def done(ok: bool) -> P.Done:
    return P.Done(ok=ok, bytes=10, seconds=1.0)


def test_a_node_goes_through_its_states():
    node = Node(info=NodeInfo(1, "192.0.2.1", 30764), channel=None)
    assert node.state is NodeState.REGISTERED
    node.position = 1
    assert node.state is NodeState.CONNECTING
    node.bytes = 5
    assert node.state is NodeState.STREAMING
    node.done = done(True)
    assert node.state is NodeState.DONE and node.state in PLACED_ALIVE and node.state not in RECEIVING
    node.done = done(False)
    assert node.state is NodeState.FAILED and node.state not in PLACED_ALIVE


def test_an_error_fails_a_node_whatever_it_reported():
    node = Node(info=NodeInfo(1, "192.0.2.1", 30764), channel=None, position=1, bytes=5)
    assert node.state in RECEIVING
    node.error = "lost"
    assert node.state is NodeState.FAILED


def test_the_summary_line_counts_states_by_word():
    rows = [NodeView(1, "a", "server", NodeState.STREAMING, 5, 1.0),
            NodeView(2, "b", "1", NodeState.FAILED, 0, 0.0, "disk full"),
            NodeView(3, "c", "2", NodeState.STREAMING, 2, 1.0)]
    line = summary_line("hdr", rows)
    assert "nodes: 1 failed, 2 streaming" in line and "slowest c" in line and "failed: b" in line


def test_the_json_report_says_ok_and_failed():
    nodes = [NodeReport(position=i, address="192.0.2.1", hostname="h", data_port=1, parent=0,
                        bytes=1, seconds=1.0, status=v) for i, v in enumerate(Verdict, 1)]
    rep = Report(software="s", session=None, arity=1, stream_bytes=1, seconds=1.0,
                 producer_status=0, stream_error=None, backend="b", rejected={}, nodes=nodes)
    d = json.loads(json.dumps(rep.to_dict()))
    assert [n["status"] for n in d["nodes"]] == ["ok", "failed"]
    assert d["totals"] == {"nodes": 2, "ok": 1, "failed": 1}
    assert "FAILED: unknown" in rep.table()
