"""bench/RESULTS.md: every table announced as printed by bench/tables.py is exactly what
that command prints from the committed CSV (no figure drifts from its raw data), and
every CSV in bench/ has such a table."""
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
ANNOUNCED = re.compile(r"^Table: `\.venv/bin/python bench/tables\.py ([^`]+)`\n\n((?:\|.*\n)+)", re.M)


def announced_tables():
    return [(args.split(), table.rstrip("\n")) for args, table in ANNOUNCED.findall(RESULTS.read_text())]


def test_every_announced_table_is_what_its_command_prints():
    tables = announced_tables()
    assert len(tables) >= 7
    for args, table in tables:
        printed = subprocess.run([sys.executable, "bench/tables.py", *args], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.rstrip("\n")
        assert table == printed, f"bench/RESULTS.md's table for `bench/tables.py {' '.join(args)}` " \
                                 f"differs from what it prints:\n{printed}"


def test_every_csv_has_its_table():
    cited = {a for args, _ in announced_tables() for a in args if a.endswith(".csv")}
    assert cited == {f"bench/{p.name}" for p in (ROOT / "bench").glob("*.csv")}


def test_a_missing_csv_is_one_line_and_exit_1():
    run = subprocess.run([sys.executable, "bench/tables.py", "bench/nonexistent.csv"], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.count("\n") == 1 and "cannot read bench/nonexistent.csv" in run.stderr
