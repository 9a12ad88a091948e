"""The progress display's pure parts."""
from kadeploy.view.progress import (
    NodeView,
    RateMeter,
    eta,
    human_bytes,
    render_table,
    summary_line,
)


def test_rate_meter_uses_a_window():
    m = RateMeter()
    for t in range(20):
        m.add(t * 1_000_000, now=float(t))
    assert m.rate == 1_000_000
    m.add(20_000_000 + 5_000_000, now=20.0)  # a burst moves the rate, but not to 5 MB/s
    assert 1_000_000 < m.rate < 5_000_000


def test_eta_and_units():
    assert eta(50, 100, 10.0) == "0:00:05"
    assert eta(50, None, 10.0) == "-" and eta(50, 100, 0.0) == "-"
    assert human_bytes(1536) == "1.5 KiB" and human_bytes(12) == "12 B"


def test_summary_line_names_the_slowest_and_the_failed():
    rows = [NodeView(1, "a", "server", "streaming", 5 << 20, 2e6),
            NodeView(2, "b", "1", "streaming", 1 << 20, 1e6),
            NodeView(3, "c", "2", "failed", 0, 0.0, "consumer failed")]
    line = summary_line("hdr", rows)
    assert "2 streaming" in line and "1 failed" in line
    assert "slowest b at 1.0 MiB" in line and "failed: c" in line


def test_table_has_every_column():
    from rich.console import Console
    console = Console(record=True, width=200)
    console.print(render_table("hdr", [NodeView(1, "n1", "server", "failed", 10, 0.0, "disk full")], total=100))
    text = console.export_text()
    for col in ("POS", "NODE", "PARENT", "STATE", "RECEIVED", "RATE", "ETA", "LAST ERROR", "disk full"):
        assert col in text
