"""Partition sizes (MiB, GiB, %, fill) to exact sector ranges and the sfdisk script,
checked against the disk's size. Pure: no I/O.

Every partition starts on a 1 MiB boundary (2048 sectors of 512 bytes), as fdisk and
parted do; `fill` takes whole MiB so that the partitions after it keep their
alignment. GPT keeps its 33-sector backup at the end of the disk; MBR logical
partitions live inside the extended one, each after the gap that holds its EBR.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

from .manifest import Partition

ALIGN_BYTES = 1 << 20
GPT_BACKUP_SECTORS = 33
MBR_MAX_SECTORS = 1 << 32

GPT_TYPES = {"linux": "0FC63DAF-8483-4772-8E79-3D69D8477DE4",
             "swap": "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F",
             "esp": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
             "bios-boot": "21686148-6449-6E6F-744E-656564454649"}
MBR_TYPES = {"linux": "83", "swap": "82", "extended": "5"}


class LayoutError(ValueError):
    """The layout does not fit the disk, or cannot be made."""


@dataclass(frozen=True)
class Placed:
    number: int          # the kernel's partition number (MBR logical ones from 5)
    name: str
    start: int           # in sectors
    sectors: int
    type_code: str       # as sfdisk takes it

    @property
    def end(self) -> int:
        return self.start + self.sectors


def _align_up(sector: int, align: int) -> int:
    return -(-sector // align) * align


def _sectors(p: Partition, space: int, sector_size: int, align: int) -> int:
    """Sectors of a sized partition (0 for fill); `space` is what a percentage is of."""
    if p.size.fill:
        return 0
    if p.size.percent:
        n = int(space * p.size.percent / 100) // align * align
        if n == 0:
            raise LayoutError(f"partition {p.name}: {p.size.text()} of the disk is less than 1 MiB")
        return n
    return -(-p.size.bytes // sector_size)


def _place_run(parts: Sequence[Partition], first: int, last: int, space: int,
               sector_size: int, align: int, gap: int, numbers: Sequence[int],
               what: str) -> List[Placed]:
    """Place `parts` in order between sectors first..last (inclusive); each start is
    aligned and preceded by `gap` sectors (an EBR for logical partitions)."""
    sizes = [_sectors(p, space, sector_size, align) for p in parts]
    # Where everything ends with fill at 0; the fill gets the rest, in whole MiB.
    pos = first
    for size in sizes:
        pos = _align_up(pos + gap, align) + size
    fill_sectors = 0
    if any(p.size.fill for p in parts):
        fill_sectors = (last + 1 - pos) // align * align
        if fill_sectors <= 0:
            need = (pos - (last + 1) + align) * sector_size
            raise LayoutError(f"the layout does not fit {what}: the fill partition would have no "
                              f"space ({need >> 20} MiB more needed)")
    placed, pos = [], first
    for p, size, number in zip(parts, sizes, numbers):
        start = _align_up(pos + gap, align)
        size = size or fill_sectors
        pos = start + size
        placed.append(Placed(number=number, name=p.name, start=start, sectors=size,
                             type_code=p.type))
    if pos > last + 1:
        need, have = pos * sector_size, (last + 1) * sector_size
        raise LayoutError(f"the layout needs {-(-need // (1 << 20))} MiB but {what} has "
                          f"{have >> 20} MiB")
    return placed


def plan(parts: Sequence[Partition], table: str, disk_bytes: int,
         sector_size: int = 512) -> List[Placed]:
    """Exact sector ranges of every partition on a disk of `disk_bytes`."""
    align = max(1, ALIGN_BYTES // sector_size)
    total = disk_bytes // sector_size
    if table == "gpt":
        last = total - GPT_BACKUP_SECTORS - 1
        placed = _place_run(parts, align, last, total, sector_size, align, 0,
                            range(1, len(parts) + 1), "the disk")
        return [_with_code(p, GPT_TYPES) for p in placed]
    if total > MBR_MAX_SECTORS:
        # An MBR table addresses 2^32 sectors (2 TiB of 512 bytes). Fixed sizes are
        # placed in that space; a fill or a percentage, meant of the whole disk, would
        # quietly be of part of it.
        relative = next((p for p in parts if p.size.fill or p.size.percent), None)
        if relative is not None:
            reach = MBR_MAX_SECTORS * sector_size
            raise LayoutError(f"an MBR table reaches only the first {reach >> 40} TiB of this "
                              f"{disk_bytes >> 30} GiB disk: partition {relative.name} "
                              f"({relative.size.text()}) would not be of the whole disk; use a GPT "
                              "table (table = \"gpt\" in the manifest's [disk]) or fixed sizes")
        total = MBR_MAX_SECTORS
    primary = [p for p in parts if not p.logical]
    logical = [p for p in parts if p.logical]
    placed = _place_run(primary, align, total - 1, total, sector_size, align, 0,
                        range(1, len(primary) + 1), "the disk")
    if logical:
        ext = next(p for p in placed if p.type_code == "extended")
        placed += _place_run(logical, ext.start, ext.end - 1, total, sector_size, align, 1,
                             range(5, 5 + len(logical)), f"extended partition {ext.name}")
    return [_with_code(p, MBR_TYPES) for p in placed]


def _with_code(p: Placed, names: dict) -> Placed:
    code = names.get(p.type_code, p.type_code)
    if code.startswith("0x"):
        code = code[2:].lstrip("0") or "0"
    return Placed(number=p.number, name=p.name, start=p.start, sectors=p.sectors, type_code=code)


def minimum_bytes(parts: Sequence[Partition], table: str, sector_size: int = 512) -> int:
    """The smallest disk the layout fits, counting 1 MiB for each fill and percentage."""
    # Searched within what the table reaches: an MBR layout that is relative (a fill,
    # a percentage) is refused beyond it, so larger sizes are not "fits" for bisection.
    lo, hi = 1 << 20, (1 << 50 if table == "gpt" else MBR_MAX_SECTORS * sector_size)
    while lo < hi:
        mid = (lo + hi) // 2 // (1 << 20) * (1 << 20) or (1 << 20)
        try:
            plan(parts, table, mid, sector_size)
            hi = mid
        except LayoutError:
            lo = mid + (1 << 20)
    return lo


def sfdisk_script(placed: Sequence[Placed], table: str, labels: dict) -> str:
    """The input of `sfdisk DEVICE` for this layout (GPT names from `labels`)."""
    lines = [f"label: {'gpt' if table == 'gpt' else 'dos'}", "unit: sectors"]
    for p in placed:
        fields = [f"start={p.start}", f"size={p.sectors}", f"type={p.type_code}"]
        if table == "gpt" and labels.get(p.name):
            fields.append(f'name="{labels[p.name]}"')
        lines.append(", ".join(fields))
    return "\n".join(lines) + "\n"
