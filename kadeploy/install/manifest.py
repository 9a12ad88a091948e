"""The install manifest: TOML (standard library) into frozen dataclasses, pure.

The TOML manifest is described in kadeploy-manifest(5); the original Ka-deploy's
partition description and `sfdisk --dump` become the same model through
kadeploy.install.formats. Every error is one line, "FILE:LINE: key 'a.b': message"; unknown
keys are errors, not ignored, so a typo never silently changes an install.
"""
from __future__ import annotations

import decimal
import hashlib
import json
import re
import string
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ..textfiles import TextError, loads_toml, one_line

FILESYSTEMS = ("ext4", "xfs", "vfat", "swap", "btrfs")
TABLES = ("gpt", "mbr")
LOADERS = ("none", "grub-bios", "grub-efi", "grub")   # grub: the one the node's firmware boots
SOURCE_KINDS = ("tar", "image", "partclone")
# Partition types by name; anything else must be a GPT type GUID or an MBR hex byte.
TYPE_NAMES = ("linux", "swap", "esp", "bios-boot", "extended")
DEFAULT_EXCLUDES = ("/proc", "/sys", "/dev", "/run", "/tmp")
UNITS = {"b": 1, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
         "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
         "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12}
NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,30}")
# Sizes beyond any disk (16 EiB, 2^64 bytes) are refused, not computed with.
MAX_SIZE = 1 << 64
# What a name rule ([identity] hostname) may use: plain names, no attributes or
# indexes, and widths no longer than a host name.
RULE_FIELDS = ("index", "position", "address", "hostname")
MAX_RULE_WIDTH = 63


class ManifestError(ValueError):
    """One line: where in the file, which key, what is wrong."""


@dataclass(frozen=True)
class Size:
    """A partition size: exact bytes, a percentage of the disk, or what is left."""
    bytes: int = 0
    percent: float = 0.0
    fill: bool = False

    def text(self) -> str:
        if self.fill:
            return "fill"
        if self.percent:   # exact, so that the text reads back as this size
            text = format(decimal.Decimal(repr(self.percent)), "f")
            return (text[:-2] if text.endswith(".0") else text) + "%"
        for unit in ("GiB", "MiB", "KiB"):
            if self.bytes % UNITS[unit.lower()] == 0:
                return f"{self.bytes // UNITS[unit.lower()]}{unit}"
        return f"{self.bytes}B"


@dataclass(frozen=True)
class Source:
    """What is sent into one partition."""
    kind: str                       # tar | image | partclone
    path: str                       # tar: a directory; image/partclone: a device or file
    exclude: Tuple[str, ...] = ()   # tar: directories sent empty, with their modes


@dataclass(frozen=True)
class Partition:
    name: str                       # identity in the stream headers and the report
    size: Size
    type: str = "linux"             # a TYPE_NAMES entry, a GPT GUID or an MBR hex byte
    fs: Optional[str] = None
    label: Optional[str] = None
    mount: Optional[str] = None
    mount_options: str = "defaults"
    mkfs_options: Tuple[str, ...] = ()
    source: Optional[Source] = None
    logical: bool = False           # MBR only: inside the extended partition


@dataclass(frozen=True)
class Disk:
    device: Optional[str] = None    # /dev/sda
    by_path: Optional[str] = None   # pci-0000:00:1f.2-ata-1 (under /dev/disk/by-path)
    min_size: int = 0               # rule: the first non-removable disk of at least this
    table: str = "gpt"


@dataclass(frozen=True)
class FileTemplate:
    path: str                       # in the new root
    content: str                    # $name placeholders (string.Template)
    mode: int = 0o644


@dataclass(frozen=True)
class Manifest:
    disk: Disk
    partitions: Tuple[Partition, ...]
    hostname: str = "node{index:02}"  # rule when no node table names the node
    files: Tuple[FileTemplate, ...] = ()
    hooks: Tuple[str, ...] = ()       # shell commands run in the new root (chroot)
    loader: str = "none"
    loader_hook: Optional[str] = None  # the boot loader as a hook instead
    machine_id: bool = True
    ssh_host_keys: bool = True
    text: str = field(default="", compare=False, repr=False)

    @property
    def digest(self) -> str:
        """Binds every stream of an install to this manifest."""
        return hashlib.sha256(self.text.encode()).hexdigest()[:32]

    def partition(self, name: str) -> Partition:
        return next(p for p in self.partitions if p.name == name)


# ------------------------------------------------------------------ helpers

def parse_size(text) -> Size:
    """'512MiB', '2GiB', '10%', 'fill', or a whole number of MiB."""
    if isinstance(text, bool):
        raise ValueError("a size is a string such as '512MiB', '10%' or 'fill'")
    if isinstance(text, int):
        return _checked_bytes(text << 20, text) if text > 0 else _checked_bytes(0, text)
    if not isinstance(text, str):
        raise ValueError("a size is a string such as '512MiB', '10%' or 'fill'")
    s = text.strip().lower()
    if s == "fill":
        return Size(fill=True)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", s)
    if m:
        pct = float(m.group(1))
        if not 0 < pct <= 100:
            raise ValueError(f"{text!r}: a percentage must be over 0 and at most 100")
        return Size(percent=pct)
    m = re.fullmatch(r"(\d+)\s*([a-z]*)", s)
    if not m or m.group(2) not in UNITS:
        raise ValueError(f"{text!r} is not a size (e.g. '512MiB', '2GiB', '10%', 'fill')")
    if len(m.group(1).lstrip("0")) > 30:   # int() of a huge digit string is refused anyway
        raise ValueError(f"{text[:40]!r}...: larger than any disk (16 EiB)")
    n = int(m.group(1)) * UNITS[m.group(2)]
    return _checked_bytes(n, text)


def _checked_bytes(n: int, text) -> Size:
    if n <= 0:
        raise ValueError("a size must be greater than 0")
    if n >= MAX_SIZE:
        raise ValueError(f"{text!r}: larger than any disk (16 EiB)")
    return Size(bytes=n)


def check_type(value: str, table: str) -> str:
    if value in TYPE_NAMES:
        return value
    if table == "gpt" and re.fullmatch(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", value):
        return value.upper()
    if table == "mbr" and re.fullmatch(r"(0x)?[0-9a-fA-F]{1,2}", value):
        return f"0x{int(value, 16):02x}"
    raise ValueError(f"{value!r} is not a partition type for {table} "
                     f"({', '.join(TYPE_NAMES)}, or a {'type GUID' if table == 'gpt' else 'hex byte'})")


def _locate(text: str, path: Tuple) -> int:
    """The line (1-based) where a key path is written, as near as the text tells:
    TOML parsers give no positions, so headers and `key =` lines are scanned."""
    lines = text.splitlines()
    table: Tuple = ()
    counts: Dict[str, int] = {}
    best = 1
    want = tuple(p for p in path)
    for no, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip()
        m = re.fullmatch(r"\[\[\s*([\w.-]+)\s*\]\]", line)
        if m:
            name = m.group(1)
            counts[name] = counts.get(name, 0) + 1
            table = (name, counts[name] - 1)
            if want == (name,) and counts[name] == 1:
                best = no            # the array as a whole: its first table
        elif (m := re.fullmatch(r"\[\s*([\w.-]+)\s*\]", line)):
            table = tuple(m.group(1).split("."))
        else:
            m = re.match(r"([\w-]+)\s*=", line)
            if not m:
                continue
            here = table + (m.group(1),)
            if want[:len(here)] == here:
                best = no
            continue
        if want[:len(table)] == table:
            best = no
    return best


class _Reader:
    """Typed access to a TOML table that remembers where it is, for errors."""

    def __init__(self, source: str, text: str, data: dict, path: Tuple = ()) -> None:
        self.source, self.text, self.data, self.path = source, text, data, path
        self.used: set = set()

    def error(self, key, message: str) -> ManifestError:
        path = self.path + ((key,) if key is not None else ())
        dotted = ".".join(_key_text(p) if not isinstance(p, int) else f"[{p + 1}]" for p in path)
        dotted = dotted.replace(".[", "[")
        return ManifestError(f"{self.source}:{_locate(self.text, path)}: key '{dotted}': {one_line(message)}")

    def get(self, key: str, kind, default=None, required: bool = False):
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        if kind is not None and (not isinstance(value, kind) or
                                 (isinstance(value, bool) and kind is not bool)):
            names = {str: "a string", int: "a whole number", bool: "true or false",
                     list: "a list", dict: "a table", (str, int): "a string or a whole number"}
            raise self.error(key, f"must be {names[kind]}")
        return value

    def sub(self, key, data: dict) -> "_Reader":
        return _Reader(self.source, self.text, data, self.path + (key,))

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _key_text(key: str) -> str:
    """A key as TOML would write it: bare when it can be, else quoted (one line)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _abs_path(r: _Reader, key: str, value: Optional[str]) -> Optional[str]:
    if value is not None and not value.startswith("/"):
        raise r.error(key, f"{value!r} must be an absolute path")
    return value


# ------------------------------------------------------------------- TOML

def parse_manifest(text: str, source: str = "manifest") -> Manifest:
    try:
        data = loads_toml(text)
    except TextError as e:
        line = e.line if e.line is not None else _locate(text, e.path)
        raise ManifestError(f"{source}:{line}: {e.message}") from None
    top = _Reader(source, text, data)
    disk = _parse_disk(top.sub("disk", top.get("disk", dict, required=True)))
    parts_data = top.get("partition", list, required=True)
    if not parts_data:
        raise top.error("partition", "needs at least one [[partition]]")
    parts = tuple(_parse_partition(top.sub("partition", {}).sub(i, p), disk.table)
                  if isinstance(p, dict) else _bad_table(top, "partition")
                  for i, p in enumerate(parts_data))
    ident = top.sub("identity", top.get("identity", dict, default={}))
    hostname = ident.get("hostname", str, default="node{index:02}")
    machine_id = ident.get("machine_id", bool, default=True)
    ssh_keys = ident.get("ssh_host_keys", bool, default=True)
    _check_rule(ident, "hostname", hostname)
    ident.finish()
    files = tuple(_parse_file(top.sub("file", {}).sub(i, f)) if isinstance(f, dict)
                  else _bad_table(top, "file")
                  for i, f in enumerate(top.get("file", list, default=[])))
    hooks = []
    for i, h in enumerate(top.get("hook", list, default=[])):
        if not isinstance(h, dict):
            _bad_table(top, "hook")
        hr = top.sub("hook", {}).sub(i, h)
        run = hr.get("run", str, required=True)
        if not run.strip():
            raise hr.error("run", "is empty")
        hr.finish()
        hooks.append(run)
    boot = top.sub("boot", top.get("boot", dict, default={}))
    loader = boot.get("loader", str, default="none")
    if loader not in LOADERS:
        raise boot.error("loader", f"{loader!r} is not one of {', '.join(LOADERS)}")
    loader_hook = boot.get("hook", str)
    if loader_hook is not None and loader != "none":
        raise boot.error("hook", "a boot hook replaces the loader: set loader = \"none\"")
    boot.finish()
    top.finish()
    m = Manifest(disk=disk, partitions=parts, hostname=hostname, files=files,
                 hooks=tuple(hooks), loader=loader, loader_hook=loader_hook,
                 machine_id=machine_id, ssh_host_keys=ssh_keys, text=text)
    _check_whole(top, m)
    return m


def _bad_table(r: _Reader, key: str):
    raise r.error(key, "must be written as [[" + key + "]] tables")


def render_rule(rule: str, index: int, address: str, hostname: str) -> str:
    """A node's name from the name rule ([identity] hostname), checked by parse_manifest."""
    return rule.format(index=index, position=index, address=address, hostname=hostname)


def _rule_problem(rule: str) -> Optional[str]:
    try:
        for _, name, spec, _ in string.Formatter().parse(rule):
            if name is None:
                continue
            if name not in RULE_FIELDS:
                return f"{name!r} is not one of {', '.join(RULE_FIELDS)}"
            if "{" in (spec or "") or any(int(w) > MAX_RULE_WIDTH for w in re.findall(r"\d+", spec or "")):
                return f"the format {spec!r} is wider than a host name"
        render_rule(rule, 1, "198.18.0.2", "h")
    except (ValueError, TypeError) as e:
        return str(e)
    return None


def _check_rule(r: _Reader, key: str, rule: str) -> None:
    problem = _rule_problem(rule)
    if problem is not None:
        raise r.error(key, f"{rule!r} is not a name rule ({problem}); use e.g. 'node{{index:02}}'")


def _parse_disk(r: _Reader) -> Disk:
    device = _abs_path(r, "device", r.get("device", str))
    by_path = r.get("by_path", str)
    min_size = r.get("min_size", (str, int))
    table = r.get("table", str, default="gpt")
    if table not in TABLES:
        raise r.error("table", f"{table!r} is not one of {', '.join(TABLES)}")
    if sum(x is not None for x in (device, by_path, min_size)) > 1:
        raise r.error("device", "give one of device, by_path and min_size")
    size = 0
    if min_size is not None:
        try:
            s = parse_size(min_size)
        except ValueError as e:
            raise r.error("min_size", str(e))
        if s.fill or s.percent:
            raise r.error("min_size", "must be an absolute size such as '8GiB'")
        size = s.bytes
    r.finish()
    return Disk(device=device, by_path=by_path, min_size=size, table=table)


def _parse_partition(r: _Reader, table: str) -> Partition:
    name = r.get("name", str, required=True)
    if not NAME_RE.fullmatch(name):
        raise r.error("name", f"{name!r}: lower-case letters, digits, '-' and '_', starting with a letter")
    size_text = r.get("size", (str, int), required=True)
    type_text = r.get("type", str, default="linux")
    try:   # (a ManifestError of r.get is a ValueError too: read first, then check)
        size = parse_size(size_text)
    except ValueError as e:
        raise r.error("size", str(e))
    try:
        ptype = check_type(type_text, table)
    except ValueError as e:
        raise r.error("type", str(e))
    fs = r.get("fs", str)
    if fs is not None and fs not in FILESYSTEMS:
        raise r.error("fs", f"{fs!r} is not one of {', '.join(FILESYSTEMS)}")
    if ptype == "swap" and fs is None:
        fs = "swap"
    label = r.get("label", str)
    mount = _abs_path(r, "mount", r.get("mount", str))
    if mount is not None and fs in (None, "swap"):
        raise r.error("mount", "only a partition with a file system can be mounted")
    opts = r.get("mount_options", str, default="defaults")
    mkfs = r.get("mkfs_options", list, default=[])
    if not all(isinstance(o, str) for o in mkfs):
        raise r.error("mkfs_options", "must be a list of strings")
    logical = r.get("logical", bool, default=False)
    if logical and table != "mbr":
        raise r.error("logical", "logical partitions exist only in an MBR table")
    src = None
    if "source" in r.data:
        src = _parse_source(r.sub("source", r.get("source", dict)), fs)
        if src.kind == "tar" and mount is None:
            raise r.error("source", "a tar source needs the partition's mount point")
    r.finish()
    return Partition(name=name, size=size, type=ptype, fs=fs, label=label, mount=mount,
                     mount_options=opts, mkfs_options=tuple(mkfs), source=src, logical=logical)


def _parse_source(r: _Reader, fs: Optional[str]) -> Source:
    given = [k for k in SOURCE_KINDS if k in r.data]
    if len(given) != 1:
        raise r.error(None, f"give exactly one of {', '.join(SOURCE_KINDS)}")
    kind = given[0]
    path = _abs_path(r, kind, r.get(kind, str))
    exclude = r.get("exclude", list, default=list(DEFAULT_EXCLUDES) if kind == "tar" else [])
    if kind != "tar" and exclude:
        raise r.error("exclude", "only a tar source has excludes")
    for e in exclude:
        if not isinstance(e, str) or not e.startswith("/") or ".." in e.split("/"):
            raise r.error("exclude", f"{e!r} must be an absolute path inside the file system")
    if kind == "tar" and fs in (None, "swap"):
        raise r.error(kind, "a tar needs a file system to extract into")
    r.finish()
    return Source(kind=kind, path=path, exclude=tuple(exclude))


def _parse_file(r: _Reader) -> FileTemplate:
    path = _abs_path(r, "path", r.get("path", str, required=True))
    content = r.get("content", str, required=True)
    mode = r.get("mode", str, default="0644")
    if not re.fullmatch(r"0?[0-7]{3,4}", mode):
        raise r.error("mode", f"{mode!r} is not an octal mode such as '0644'")
    r.finish()
    return FileTemplate(path=path, content=content, mode=int(mode, 8))


def _check_whole(top: _Reader, m: Manifest) -> None:
    names, mounts = set(), set()
    table = m.disk.table
    for i, p in enumerate(m.partitions):
        r = top.sub("partition", {}).sub(i, {})
        if p.name in names:
            raise r.error("name", f"{p.name!r} names two partitions")
        names.add(p.name)
        if p.mount is not None:
            if p.mount in mounts:
                raise r.error("mount", f"{p.mount!r} is the mount point of two partitions")
            mounts.add(p.mount)
        if p.type in ("esp", "bios-boot") and table != "gpt":
            raise r.error("type", f"{p.type} partitions exist only in a GPT table")
        if p.type == "extended" and table != "mbr":
            raise r.error("type", "an extended partition exists only in an MBR table")
    fills = [p for p in m.partitions if p.size.fill]
    if len([p for p in fills if not p.logical]) > 1 or len([p for p in fills if p.logical]) > 1:
        raise top.error("partition", "only one partition (and one logical one) may be 'fill'")
    if table == "mbr":
        primary = [p for p in m.partitions if not p.logical]
        if len(primary) > 4:
            raise top.error("partition", "an MBR table holds at most 4 primary partitions "
                            "(use an extended one and logical ones)")
        if any(p.logical for p in m.partitions) and not any(p.type == "extended" for p in primary):
            raise top.error("partition", "logical partitions need an extended partition")
    if mounts and "/" not in mounts:
        raise top.error("partition", "no partition is mounted on /")
    if m.loader in ("grub-efi", "grub") and not any(p.type == "esp" for p in m.partitions):
        raise top.sub("boot", {}).error("loader", f"{m.loader} needs a partition of type esp")
    if m.loader in ("grub-bios", "grub") and table == "gpt" and not any(p.type == "bios-boot" for p in m.partitions):
        raise top.sub("boot", {}).error("loader", f"{m.loader} on GPT needs a partition of type bios-boot")


def load_manifest(path: str) -> Manifest:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ManifestError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}:1: not UTF-8 text") from None
    return parse_manifest(text, path)
