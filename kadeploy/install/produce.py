"""The server's install producer: every source of a manifest, framed into one
install stream on stdout (kadeploy.install.stream). Run by ka-d-server --install as
`python -m kadeploy.install.produce MANIFEST [--strict]`.

A tar source is read through a private, read-only bind mount of its directory when
this process may make one (root, util-linux unshare): tar then sees exactly that one
file system, including what lies under its mount points, and nothing can be written
into it. The server never writes into what it sends.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from typing import BinaryIO, List, Optional

from . import order
from .manifest import ManifestError, Partition, Source, load_manifest
from .stream import END_TAG, STEP_TAG, STREAM_TAG, TRAILER_TAG, FrameWriter, write_record

BLOCK = 1 << 20
# GNU tar: 1 means some files changed while being read (a live source), 2 fatal.
TAR_CHANGED = 1


def tar_options(src: Source) -> List[str]:
    opts = ["--create", "--file", "-", "--one-file-system", "--sparse", "--numeric-owner",
            "--acls", "--xattrs", "--xattrs-include=*", "--anchored"]
    for e in src.exclude:
        opts.append("--exclude=." + e.rstrip("/") + "/*")   # the directory stays, empty
    return opts


def tar_argv(src: Source) -> List[str]:
    """tar of one file system, through a private read-only bind mount when possible."""
    tar = ["tar", *tar_options(src)]
    if os.geteuid() == 0 and shutil.which("unshare"):
        # The bind mount lives in the new mount namespace only; it goes with it.
        script = ('d=$(mktemp -d /tmp/kdi-src-XXXXXX) && mount --bind "$1" "$d" && '
                  'mount -o remount,bind,ro "$d" || exit 2; shift; '
                  '"$@" --directory "$d" .; st=$?; umount "$d"; rmdir "$d"; exit $st')
        return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script,
                "sh", src.path, *tar]
    return [*tar, "--directory", src.path, "."]


def _send_process(argv: List[str], frames: FrameWriter) -> int:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        while True:
            chunk = proc.stdout.read1(BLOCK)
            if not chunk:
                break
            frames.data(chunk)
    finally:
        proc.stdout.close()
    return proc.wait()


def _send_image(path: str, frames: FrameWriter) -> None:
    """A raw image; whole blocks of zeros go as zero runs (written sparse-aware)."""
    zero = bytes(BLOCK)
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(BLOCK)
            if not chunk:
                return
            if len(chunk) == BLOCK and chunk == zero:
                frames.zeros(BLOCK)
            else:
                frames.data(chunk)


def image_size(path: str) -> int:
    with open(path, "rb") as f:
        return f.seek(0, os.SEEK_END)


def send_step(out: BinaryIO, digest: str, index: int, p: Partition, strict: bool) -> Optional[str]:
    """One step of the stream; returns why the deployment must fail, or None."""
    src = p.source
    header = {"manifest": digest, "index": index, "partition": p.name, "fs": p.fs,
              "kind": src.kind, "size": None}
    error = warning = None
    status = 0
    if src.kind == "image":
        try:
            header["size"] = image_size(src.path)
        except OSError as e:
            error = f"cannot read image {src.path}: {e.strerror}"
    elif src.kind == "partclone":
        tool = order.partclone_tool(p.fs)
        if shutil.which(tool) is None:
            error = f"{tool} is not installed on the server"
    write_record(out, STEP_TAG, header)
    frames = FrameWriter(out)
    if error is None:
        if src.kind == "tar":
            status = _send_process(tar_argv(src), frames)
            if status == TAR_CHANGED:
                warning = "some files changed while tar read them (a live source)"
                if strict:
                    error, warning = f"tar of {src.path}: {warning}, and --strict", None
            elif status != 0:
                error = f"tar of {src.path} failed (exit status {status})"
        elif src.kind == "image":
            try:
                _send_image(src.path, frames)
            except OSError as e:
                error = f"reading image {src.path} failed: {e.strerror}"
        else:
            status = _send_process([order.partclone_tool(p.fs), "--clone", "--source", src.path,
                                    "--output", "-", "--quiet"], frames)
            if status != 0:
                error = f"{order.partclone_tool(p.fs)} of {src.path} failed (exit status {status})"
    frames.end()
    write_record(out, TRAILER_TAG, {"bytes": frames.bytes, "digest": frames.digest,
                                    "status": status, "warning": warning, "error": error})
    if error:
        print(f"kadeploy install: step {index} ({p.name}): {error}", file=sys.stderr)
    elif warning:
        print(f"kadeploy install: step {index} ({p.name}): warning: {warning}", file=sys.stderr)
    return error


def produce(manifest_path: str, strict: bool, out: BinaryIO, digest: Optional[str] = None) -> int:
    m = load_manifest(manifest_path)
    if digest is not None and m.digest != digest:
        # The nodes hold the manifest the server read at its start: refuse to send another.
        raise ManifestError(f"{manifest_path} changed since the server read it")
    steps = order.streams(m)
    write_record(out, STREAM_TAG, {"manifest": m.digest, "steps": [p.name for p in steps]})
    failed = None
    for i, p in enumerate(steps):
        failed = send_step(out, m.digest, i, p, strict)
        if failed:
            break                        # the rest would be written onto a failed install
    write_record(out, END_TAG, {"ok": failed is None})
    out.flush()
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="kadeploy-install-produce")
    ap.add_argument("manifest")
    ap.add_argument("--strict", action="store_true")
    ap.add_argument("--digest", help="the manifest's digest, as the server read it")
    args = ap.parse_args(argv)
    try:
        return produce(args.manifest, args.strict, sys.stdout.buffer, args.digest)
    except ManifestError as e:
        print(f"kadeploy install: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
