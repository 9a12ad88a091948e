"""`kadeploy demo`: a real deployment on this machine, verified.

A server and several clients run as separate processes of the real commands on
loopback; they clone a generated sample tree, and every copy is compared with the
source by content and metadata.
"""
from __future__ import annotations

import contextlib
import os
import random
import shlex
import subprocess
import sys
import tempfile
from typing import Iterator, List

import click

from kadeploy.lab.ports import free_port
from kadeploy.lab.treedigest import diff_manifests, tree_digest, tree_manifest
from kadeploy.options import CONTEXT, arity_option, relay_option


def make_sample_tree(root: str, *, big_mib: int = 32, n_files: int = 300, seed: int = 1) -> None:
    """A small tree with the usual suspects: many small files, a big one, a sparse
    one, links, an empty directory."""
    rng = random.Random(seed)
    os.makedirs(root, exist_ok=True)
    for i in range(n_files):
        d = os.path.join(root, "etc" if i % 3 == 0 else "usr/share/doc", f"pkg{i % 17}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"file{i}.txt"), "w") as f:
            f.write(f"sample file {i}\n" * rng.randint(1, 200))
    with open(os.path.join(root, "big.img"), "wb") as f:
        for _ in range(big_mib):
            f.write(rng.randbytes(1 << 20))
    with open(os.path.join(root, "sparse.img"), "wb") as f:
        f.truncate(256 << 20)
        f.seek(100 << 20)
        f.write(b"data in the middle of a hole")
    os.symlink("big.img", os.path.join(root, "link-to-big"))
    os.link(os.path.join(root, "big.img"), os.path.join(root, "hardlink-to-big"))
    os.makedirs(os.path.join(root, "var/empty"))
    os.chmod(os.path.join(root, "var/empty"), 0o1777)


@contextlib.contextmanager
def workdir() -> Iterator[str]:
    """A tmpfs when root (extracting onto this ext4 right after deleting is slow),
    else a plain temporary directory."""
    if os.geteuid() == 0:
        try:
            from kadeploy.lab.vcluster import scratch_fs
            with scratch_fs("1G") as path:
                yield path
                return
        except (ImportError, OSError, RuntimeError):
            pass
    with tempfile.TemporaryDirectory(prefix="kadeploy-demo-") as path:
        yield path


@click.command("demo", context_settings=CONTEXT)
@click.option("-n", "--clients", type=click.IntRange(1, 64), default=4, show_default=True,
              help="Number of clients.")
@arity_option
@relay_option
@click.option("--source", type=click.Path(exists=True, file_okay=False), default=None,
              help="Clone this directory instead of a generated sample tree.")
def demo_command(clients: int, arity: int, relay_backend, source):
    """Run a real deployment on this machine: a server and CLIENTS clients on
    loopback clone a sample tree; every copy is then verified."""
    with workdir() as work:
        src = source or os.path.join(work, "source")
        if not source:
            click.echo(f"demo: generating a sample tree in {src}", err=True)
            make_sample_tree(src)
        targets = [os.path.join(work, f"node{i + 1}") for i in range(clients)]
        for t in targets:
            os.makedirs(t)
        ctrl, data = free_port(), free_port()
        report = os.path.join(work, "report.json")
        kd = [sys.executable, "-m", "kadeploy"]
        relay = ["--relay", relay_backend] if relay_backend else []
        # The clients listen on a port of their own: on one host they must not take
        # the server's data port before it has started.
        common = ["-p", str(ctrl), "-P", str(data)] + relay
        client_common = ["-p", str(ctrl), "-P", str(free_port())] + relay
        producer = f"tar --create --sparse --numeric-owner --directory {shlex.quote(src)} ."
        server_argv = kd + ["server", "-n", str(clients), "-a", str(arity), "-e", producer,
                            "--wait-timeout", "60", "--report", report, *common]
        click.echo("demo: " + " ".join(shlex.quote(a) for a in ["ka-d-server", *server_argv[4:]]), err=True)
        server = subprocess.Popen(server_argv)
        procs: List[subprocess.Popen] = []
        try:
            for t in targets:
                procs.append(subprocess.Popen(kd + ["client", "-h", "127.0.0.1", "-t", t, "-q", *client_common]))
            client_status = [p.wait(timeout=600) for p in procs]
            server_status = server.wait(timeout=600)
        finally:
            for p in [server, *procs]:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        click.echo(f"demo: server exited {server_status}; clients exited {client_status}", err=True)
        want = tree_manifest(src)
        digest = tree_digest(src)
        bad = 0
        for i, t in enumerate(targets, 1):
            got = tree_digest(t)
            if got == digest:
                click.echo(f"demo: node {i}: identical to the source ({digest[:16]})")
            else:
                bad += 1
                diffs = diff_manifests(want, tree_manifest(t))
                click.echo(f"demo: node {i}: DIFFERS from the source: {'; '.join(diffs[:5])}")
        ok = bad == 0 and server_status == 0 and not any(client_status)
        click.echo("demo: success" if ok else "demo: FAILED")
        sys.exit(0 if ok else 1)
