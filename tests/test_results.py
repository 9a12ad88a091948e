"""bench/RESULTS.md: every table announced as printed by bench/tables.py is exactly what
that command prints from the committed CSV (no figure drifts from its raw data), and
every CSV in bench/ has such a table."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
ANNOUNCED = re.compile(r"^Table: `\.venv/bin/python bench/tables\.py ([^`]+)`\n\n((?:\|.*\n)+)", re.M)


def announced_tables():
    return [(args.split(), table.rstrip("\n")) for args, table in ANNOUNCED.findall(RESULTS.read_text())]


def load_tables_module():
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "bench" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_announced_table_is_what_its_command_prints(monkeypatch, capsys):
    tables = announced_tables()
    assert len(tables) >= 7
    monkeypatch.chdir(ROOT)
    main = load_tables_module().main      # in this process: the same code, no start-ups
    for args, table in tables:
        assert main(args) == 0
        printed = capsys.readouterr().out.rstrip("\n")
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
