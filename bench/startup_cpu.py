"""CPU a client process costs from exec to its registration, against the interpreter's
own start-up measured in the same run (`python -c pass`).

    .venv/bin/python bench/startup_cpu.py [--rounds 20] [--out bench/out/startup.json]

The issue's figure: <= 50 ms of CPU from exec to registration: `cpu_to_registration_ms`,
from rounds where the stand-in server kills the client as soon as its Hello arrives;
`keyed_cpu_to_registration_ms` the same for a client with --key-file, killed as soon as
its Auth (its answer to the stand-in's Challenge) arrives. Other rounds refuse a keyless
client instead and check that it exits 3 ("could not join"); their `cpu_to_exit_ms`
includes what the client imports after its Hello. Byte code is compiled first, as in
an installed copy (kadeploy.lab.benchlib.bytecode), and one warm-up round runs first.
It also clears the variables that choose a key or a relay backend: the figures are
with defaults. Each round also times a ka-d-server from exec to listening
(`server_wall_to_listen_ms`), and a client's end after a real 16 MiB deployment, the
wall time from its last line to its exit: as it ends (`exit_wall_ms`, kadeploy.entry)
and with the interpreter's full teardown (`exit_wall_teardown_ms`).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from kadeploy import defaults  # noqa: E402
from kadeploy.lab.benchlib import bytecode, output, startup  # noqa: E402


def client_argv():
    script = os.path.join(os.path.dirname(sys.executable), "ka-d-client")
    return [script] if os.path.exists(script) else [sys.executable, "-m", "kadeploy", "client"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--out", default=None, help="also write the figures as JSON here")
    args = ap.parse_args(argv)
    byte_code = bytecode.as_installed()
    cleared = (defaults.ENV_KEY, defaults.ENV_KEY_FILE,
               defaults.ENV_BACKEND, defaults.ENV_REQUIRE)
    env = {k: v for k, v in os.environ.items() if k not in cleared}
    cmd = client_argv() + ["--discard"]
    key = os.urandom(32).hex().encode()
    key_file = tempfile.NamedTemporaryFile(prefix="kadeploy-bench-key-")   # mode 0600
    key_file.write(key)
    key_file.flush()
    keyed_cmd = cmd + ["--key-file", key_file.name]
    startup.measure(cmd, env=env)                       # warm-up: byte code cached
    startup.measure(keyed_cmd, env=env, key=key)
    runs, killed, keyed, floor, servers, ends, teardowns = [], [], [], [], [], [], []
    for _ in range(args.rounds):   # interleaved: the machine's drift hits them all alike
        runs.append(startup.measure(cmd, env=env))
        killed.append(startup.measure(cmd, env=env, kill_at_registration=True))
        keyed.append(startup.measure(keyed_cmd, env=env, kill_at_registration=True, key=key))
        floor += startup.python_floor(sys.executable, 1)
        servers.append(startup.server_start(sys.executable, env=env))
        ends.append(startup.exit_wall(sys.executable, full_teardown=False, env=env))
        teardowns.append(startup.exit_wall(sys.executable, full_teardown=True, env=env))
    key_file.close()
    floor.sort()
    server_walls = sorted(wall for wall, _ in servers)
    bad = [r.status for r in runs if r.status != 3]     # 3: refused, "could not join"
    if bad:
        print(f"startup_cpu: client exited {bad[0]} instead of 3 after the refusal", file=sys.stderr)
        return 1
    totals = sorted(r.cpu_total for r in runs)
    to_hello = sorted(r.cpu_total for r in killed)
    keyed_cpu = sorted(r.cpu_total for r in keyed)
    result = {
        **output.run_header("bench/startup_cpu.py", argv),
        "byte_code": byte_code,
        "rounds": args.rounds,
        "cpu_to_exit_ms": {"min": 1000 * totals[0], "median": 1000 * statistics.median(totals),
                           "max": 1000 * totals[-1]},
        "cpu_to_registration_ms": {"min": 1000 * to_hello[0], "median": 1000 * statistics.median(to_hello),
                                   "max": 1000 * to_hello[-1]},
        "keyed_cpu_to_registration_ms": {"min": 1000 * keyed_cpu[0],
                                         "median": 1000 * statistics.median(keyed_cpu),
                                         "max": 1000 * keyed_cpu[-1]},
        "cpu_at_registration_ms_median_ticks": 1000 * statistics.median(r.cpu_at_registration for r in runs),
        "wall_to_registration_ms_median": 1000 * statistics.median(r.wall_to_registration for r in runs),
        "python_floor_ms": 1000 * floor[0],                 # the least of its rounds
        "python_floor_ms_median": 1000 * statistics.median(floor),
        "python_floor_ms_max": 1000 * floor[-1],
        "registration_ratio_to_floor_median": statistics.median(to_hello) / statistics.median(floor),
        "keyed_ratio_to_floor_median": statistics.median(keyed_cpu) / statistics.median(floor),
        "target_ms": 50,
        # the other end: ka-d-server --synthetic from exec to listening on its control port
        "server_wall_to_listen_ms": {"min": 1000 * server_walls[0],
                                     "median": 1000 * statistics.median(server_walls),
                                     "max": 1000 * server_walls[-1]},
        "server_cpu_at_listen_ms_median_ticks": 1000 * statistics.median(cpu for _, cpu in servers),
        "exit_wall_ms": {"min": 1000 * min(ends), "median": 1000 * statistics.median(ends),
                         "max": 1000 * max(ends)},
        "exit_wall_teardown_ms": {"min": 1000 * min(teardowns), "median": 1000 * statistics.median(teardowns),
                                  "max": 1000 * max(teardowns)},
    }
    print(json.dumps(result, indent=2))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
