"""`kadeploy receive`, the node's side of `kadeploy push`: the normal client, whose
consumer writes under a temporary name in the destination, renamed into place only
when the node's copy is verified (the client's Outcome is ok), removed otherwise.

The checks that can fail on a node (the destination, the server's address) run before
anything else, so that the launcher carries their one-line error back to the head.
With --detach the receiver forks once it has checked, returns when the child has
registered with the server (or failed to), and the child goes on alone: its verdict
reaches the head through the control connection, like any client's.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import shlex
import shutil
import stat
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, List, Optional

from kadeploy.control.client import Client, ClientConfig
from kadeploy.core import protocol as P
from kadeploy.errors import EXIT_FAILED, EXIT_OK, KadeployError, UsageError

log = logging.getLogger("kadeploy.client")
TEMP_PREFIX = ".kadeploy-push-"

# tar without --preserve: the receiving user owns everything, modes follow its umask
# and times are those of the copy, as cp does without -p.
TAR_PLAIN = ["--no-same-owner", "--no-same-permissions", "--touch"]
TAR_PRESERVE_EXTRACT = ["--same-owner", "--numeric-owner", "--same-permissions", "--xattrs",
                        "--xattrs-include=*", "--acls"]
TAR_PRESERVE_CREATE = ["--numeric-owner", "--xattrs", "--acls"]


@dataclass
class FileStat:
    """What --preserve keeps of a single file (--file): the stream has only its bytes."""
    mode: int
    uid: int
    gid: int
    mtime_ns: int

    def encode(self) -> str:
        return f"{self.mode:o},{self.uid},{self.gid},{self.mtime_ns}"

    @classmethod
    def decode(cls, text: str) -> "FileStat":
        try:
            mode, uid, gid, mtime = text.split(",")
            return cls(int(mode, 8), int(uid), int(gid), int(mtime))
        except ValueError:
            raise UsageError(f"bad --stat {text!r}: expected MODE,UID,GID,MTIME_NS")

    @classmethod
    def of(cls, st: os.stat_result) -> "FileStat":
        return cls(stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns)


# ----------------------------------------------------------- putting in place

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(a: str, b: str) -> bool:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE); False where the kernel,
    libc or file system cannot."""
    fn = getattr(_libc, "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    e = ctypes.get_errno()
    if e in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(e, os.strerror(e), b)


def put_in_place(new: str, final: str, attic: str) -> None:
    """Make `new` be `final`. An existing `final` is swapped out into `attic` (removed
    by the caller), so that readers see the old copy or the new one, never a mix."""
    if os.path.lexists(final):
        if exchange(new, final):
            os.rename(new, attic)     # `new` now names the old copy
            return
        os.rename(final, attic)
    os.rename(new, final)


class Destination:
    """Where one node's copy goes: a temporary name beside its final place, made now
    (so a destination that cannot be written fails before the transfer), and the
    consumer that writes it."""

    def __init__(self, dest: str, single_file: bool, name: Optional[str], preserve: bool,
                 file_stat: Optional[FileStat]) -> None:
        self.dest, self.single_file, self.preserve, self.file_stat = dest, single_file, preserve, file_stat
        self.device = False
        self.temp: Optional[str] = None
        self.final: Optional[str] = None
        try:
            self._prepare(name)
        except OSError as e:
            raise KadeployError(f"cannot write into {dest}: {e.strerror}")

    def _prepare(self, name: Optional[str]) -> None:
        dest = self.dest
        if not self.single_file:
            if not os.path.isdir(dest):
                raise KadeployError(f"destination {dest} is not a directory on this node")
            self.temp = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=dest)
            return
        if os.path.exists(dest) and stat.S_ISBLK(os.stat(dest).st_mode):
            self.device = True      # written in place: a device has no temporary name
            self.final = dest
            with open(dest, "r+b"):
                pass                 # fails now if it cannot be written
            return
        self.final = os.path.join(dest, name) if os.path.isdir(dest) and name else dest
        parent = os.path.dirname(os.path.abspath(self.final))
        if not os.path.isdir(parent):
            raise KadeployError(f"directory {parent} does not exist on this node")
        fd, self.temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=parent)
        os.close(fd)

    def consumer(self) -> str:
        if self.single_file:
            return f"cat > {shlex.quote(self.final if self.device else self.temp)}"
        flags = TAR_PRESERVE_EXTRACT if self.preserve else TAR_PLAIN
        return shlex.join(["tar", "--extract", "--read-full-records", "--file", "-",
                           "--directory", self.temp, *flags])

    def finish(self) -> List[str]:
        """The verified copy into place; returns the names put there."""
        if self.device:
            return [self.final]
        parent = os.path.dirname(self.temp)
        if self.single_file:
            if self.file_stat is not None:
                st = self.file_stat
                os.chown(self.temp, st.uid, st.gid)
                os.chmod(self.temp, st.mode)
                os.utime(self.temp, ns=(st.mtime_ns, st.mtime_ns))
            else:
                os.chmod(self.temp, 0o666 & ~_umask())
            attic = tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=parent)
            try:
                put_in_place(self.temp, self.final, os.path.join(attic, "old"))
            finally:
                shutil.rmtree(attic, ignore_errors=True)
            return [self.final]
        placed = []
        attic = os.path.join(self.temp, TEMP_PREFIX + "old")
        os.mkdir(attic)
        for entry in sorted(os.listdir(self.temp)):
            if entry == os.path.basename(attic):
                continue
            final = os.path.join(self.dest, entry)
            put_in_place(os.path.join(self.temp, entry), final, os.path.join(attic, entry))
            placed.append(final)
        self.discard()
        return placed

    def discard(self) -> None:
        """Nothing that was not verified stays: the temporary copy goes."""
        if self.temp is None or not os.path.lexists(self.temp):
            return
        if os.path.isdir(self.temp) and not os.path.islink(self.temp):
            shutil.rmtree(self.temp, ignore_errors=True)
        else:
            os.unlink(self.temp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------ the client

class _WelcomeWatch:
    """The control channel as the client sees it, telling us when the server's Welcome
    (registration) arrives."""

    def __init__(self, channel, on_welcome: Callable[[int], None]) -> None:
        self._channel, self._on_welcome = channel, on_welcome

    async def recv(self):
        msg = await self._channel.recv()
        if isinstance(msg, P.Welcome) and self._on_welcome is not None:
            self._on_welcome(msg.node_id)
            self._on_welcome = None
        return msg

    def __getattr__(self, name):
        return getattr(self._channel, name)


class Receiver(Client):
    """The client, with the copy put in place between verification and the report
    (so the server's verdict includes the rename)."""

    def __init__(self, cfg: ClientConfig, destination: Destination,
                 on_registered: Callable[[int], None] = lambda node_id: None) -> None:
        super().__init__(cfg)
        self.destination = destination
        self.on_registered = on_registered

    async def _session(self, ch, sent=None, auth_sent=None):
        return await super()._session(_WelcomeWatch(ch, self.on_registered), sent, auth_sent)

    async def _deploy(self, node_id, place, link):
        outcome = await super()._deploy(node_id, place, link)
        if not outcome.ok:
            self.destination.discard()
            return outcome
        try:
            placed = await asyncio.get_running_loop().run_in_executor(None, self.destination.finish)
            log.info("verified; in place: %s", " ".join(placed))
        except OSError as e:
            self.destination.discard()
            outcome.ok = False
            outcome.error = f"verified, but putting it in place failed: {e.strerror}: {e.filename}"
        return outcome


def server_address(server: Optional[str]) -> str:
    """--server, else the address this node's ssh session came from."""
    if server:
        return server
    conn = os.environ.get("SSH_CONNECTION", "").split()
    if conn:
        return conn[0]
    raise UsageError("no --server given, and not started through ssh ($SSH_CONNECTION is not set)")


def run_receiver(cfg: ClientConfig, destination: Destination,
                 on_registered: Callable[[int], None] = lambda node_id: None) -> int:
    try:
        outcome = asyncio.run(Receiver(cfg, destination, on_registered).run())
    except BaseException:
        destination.discard()
        raise
    if not outcome.ok:
        destination.discard()
        log.error("%s", outcome.error)
    return EXIT_OK if outcome.ok else EXIT_FAILED


def detached(work: Callable[[Callable[[int], None]], int]) -> int:
    """Run `work(on_registered)` in a child that outlives this process; return (in the
    parent) 0 once the child has registered, else the child's one-line error."""
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(w)
        with os.fdopen(r, "rb") as f:
            said = f.read().decode(errors="replace")
        if said.startswith("registered"):
            return EXIT_OK
        os.waitpid(pid, 0)
        code, _, message = said.partition(" ")
        raise KadeployError(message.strip() or "the receiver died before it registered",
                            exit_code=int(code) if code.isdigit() else EXIT_FAILED)
    # The child: its own session, and no fd shared with the launcher's session, so
    # that ssh, clush and pdsh see the command end now.
    os.close(r)
    os.setsid()
    fd, logpath = tempfile.mkstemp(prefix="kadeploy-receive-", suffix=".log")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(null)
    os.close(fd)
    told = False

    def registered(node_id: int) -> None:
        nonlocal told
        os.write(w, f"registered {node_id}\n".encode())
        os.close(w)
        told = True

    code = EXIT_FAILED
    try:
        code = work(registered)
    except KadeployError as e:
        log.error("%s", e)
        code = e.exit_code
        if not told:
            os.write(w, f"{code} {e}\n".encode())
    except BaseException as e:  # noqa: BLE001 - the parent must hear something
        log.exception("receiver failed")
        if not told:
            os.write(w, f"{EXIT_FAILED} internal error: {type(e).__name__}: {e}\n".encode())
    finally:
        if code == EXIT_OK:
            os.unlink(logpath)
        os._exit(code)


def receive(cfg: ClientConfig, destination: Destination, detach: bool) -> int:
    if not detach:
        return run_receiver(cfg, destination)
    try:
        return detached(lambda on_registered: run_receiver(cfg, destination, on_registered))
    except KadeployError:
        destination.discard()     # the child failed before it registered
        raise
