"""Fuzzing the files an admin writes: the install manifest (TOML, the original's
partition description, `sfdisk --dump`), the install node table and the boot kit's
node table (CSV and TOML).

The contract, for every parser and any text (and any bytes, read by the parser's own
loader): either a value that obeys the parser's own rules (checked here from the
outside, and rendered back where it can be), or the parser's documented error
(ManifestError, or UsageError for the boot kit) in one line that names the source;
never any other exception. Well-formed inputs are also mutated (a line dropped,
doubled, moved, a value of the wrong type, huge numbers, unicode, NULs) so that the
fuzzing reaches the checks behind the TOML and CSV layers. See docs/fuzzing.md.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from hypothesis import assume, given
from hypothesis import strategies as st

from input_rules import check_error, check_value, csv_text, outcome, toml_tables, toml_value

from kadeploy.errors import UsageError
from kadeploy.install import nodes
from kadeploy.install.cli import _load as load_partition_file
from kadeploy.install.manifest import FILESYSTEMS, MAX_SIZE, TABLES, TYPE_NAMES, ManifestError, \
    load_manifest, parse_size
from kadeploy.netboot import nodetable

# ------------------------------------------------------------------ strategies

ANY_TEXT = st.text(max_size=60)
LINE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x0b\x0c\x1c\x1d"
                                  "\x1e\x85\u2028\u2029"), max_size=30)
LOWER = "abcdefghijklmnopqrstuvwxyz"
NAMES = st.builds(str.__add__, st.sampled_from(LOWER), st.text(LOWER + "0123456789_-", max_size=30))
ABS = st.builds(lambda parts: "/" + "/".join(parts),
                st.lists(st.text(LOWER + "0123456789._-", min_size=1, max_size=8).filter(lambda s: s not in (".", "..")),
                         min_size=1, max_size=3))
COLUMN_KEYS = st.builds(str.__add__, st.sampled_from(LOWER + "_ABZ"), st.text(LOWER + "_09AZ", max_size=8))
BYTES_SIZE = st.one_of(st.integers(1, 1 << 20).map(lambda n: f"{n}MiB"),
                       st.integers(1, 1 << 14).map(lambda n: f"{n}GiB"),
                       st.integers(1, 1 << 30).map(lambda n: f"{n}KiB"),
                       st.integers(1, 1 << 20), st.integers(1, 10 ** 15).map(lambda n: f"{n}kb"))
PERCENT = st.floats(0.01, 100).map(lambda f: f"{f:.6f}".rstrip("0").rstrip(".") + "%")
FS_FOR = {"linux": FILESYSTEMS, "esp": ("vfat",), "bios-boot": (), "swap": ("swap",)}
RULES = st.sampled_from(["node{index:02}", "n{index}", "{hostname}", "rack1-{position:03d}",
                         "{address}", "x{index:>10}", "{hostname!s}-{index}"])
# A value of the wrong type or range, for any key.
WRONG = st.one_of(
    st.sampled_from(["0", "-1", "1.5", "inf", "nan", "true", "[]", "{}", '""', '"\\u0000"', "1979-05-27",
                     "99999999999999999999", "0x" + "f" * 40, '"' + "9" * 40 + 'MiB"', '"fill"',
                     '"100.5%"', '"0%"', '"/"', '"../x"', "[1, 2]", '{ tar = "/" }', "[[]]", '"\\u00e9"',
                     "[" * 50 + "]" * 50, '"node{index.real}"', '"{index:>99999}"', '"{0}"']),
    ANY_TEXT.map(toml_value), st.integers(-(1 << 70), 1 << 70).map(str))


@st.composite
def manifests(draw):
    """A model of a valid manifest, as TOML tables: [(header, table)], and its partitions."""
    table = draw(st.sampled_from(TABLES))
    disk = draw(st.sampled_from(["none", "device", "by_path", "min_size"]))
    doc = [("[disk]", {"table": table,
                       "device": draw(ABS.map(lambda p: "/dev" + p)) if disk == "device" else None,
                       "by_path": draw(LINE_TEXT) if disk == "by_path" else None,
                       "min_size": draw(BYTES_SIZE) if disk == "min_size" else None})]
    types = ["linux", "swap"] + (["esp", "bios-boot"] if table == "gpt" else [])
    n_primary = draw(st.integers(1, 4 if table == "mbr" else 8))
    with_extended = table == "mbr" and n_primary < 4 and draw(st.booleans())
    n_logical = draw(st.integers(0, 4)) if with_extended else 0
    names = draw(st.lists(NAMES, min_size=n_primary + with_extended + n_logical,
                          max_size=n_primary + with_extended + n_logical, unique=True))
    mountable = draw(st.booleans())
    parts, mounts = [], set()
    fill = {False: draw(st.integers(-1, n_primary)), True: draw(st.integers(-1, n_logical))}
    kinds = ([(False, draw(st.sampled_from(types))) for _ in range(n_primary)]
             + [(False, "extended")] * with_extended + [(True, "linux")] * n_logical)
    for i, ((logical, ptype), name) in enumerate(zip(kinds, names)):
        local = i - (n_primary + with_extended) if logical else i
        p = {"name": name, "size": "fill" if local == fill[logical] else draw(BYTES_SIZE | PERCENT),
             "type": ptype if ptype in TYPE_NAMES or draw(st.booleans()) else
             draw(st.uuids().map(str) if table == "gpt" else st.integers(0, 255).map(lambda b: f"{b:02x}")),
             "logical": logical or None, "label": draw(st.none() | ANY_TEXT)}
        if p["type"] == "linux" and table == "gpt" and draw(st.booleans()):
            p["type"] = draw(st.uuids().map(str))
        fs_choices = FS_FOR.get(ptype, ()) if ptype != "extended" else ()
        p["fs"] = draw(st.sampled_from(fs_choices)) if fs_choices and draw(st.booleans()) else None
        if p["fs"] not in (None, "swap") and mountable:
            mount = "/" if "/" not in mounts else draw(ABS.filter(lambda m: m not in mounts))
            mounts.add(mount)
            p["mount"] = mount
            if draw(st.booleans()):
                p["source"] = {"tar": draw(ABS)}
        elif ptype != "extended" and draw(st.booleans()):
            p["source"] = {draw(st.sampled_from(["image", "partclone"])): draw(ABS)}
        parts.append(p)
    assume(not mounts or "/" in mounts)
    doc += [("[[partition]]", p) for p in parts]
    doc.append(("[identity]", {"hostname": draw(RULES), "machine_id": draw(st.booleans())}))
    for _ in range(draw(st.integers(0, 2))):
        doc.append(("[[file]]", {"path": draw(ABS), "content": draw(ANY_TEXT),
                                 "mode": draw(st.sampled_from(["0644", "0755", "600", "4755"]))}))
    for _ in range(draw(st.integers(0, 2))):
        doc.append(("[[hook]]", {"run": draw(LINE_TEXT.filter(str.strip))}))
    loaders = ["none"] + (["grub-efi"] if any(p["type"] == "esp" for p in parts) else []) + \
        (["grub-bios"] if table == "mbr" or any(p["type"] == "bios-boot" for p in parts) else [])
    doc.append(("[boot]", {"loader": draw(st.sampled_from(loaders))}))
    return doc, parts


@st.composite
def mutated_lines(draw, text: str):
    """The text with one to three of: a line dropped, doubled, moved, replaced by any
    text, its value replaced by a wrong one, a character inserted, the text cut."""
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "double", "move", "replace", "value", "insert", "cut"]))
        if op == "drop":
            del lines[i]
        elif op == "double":
            lines.insert(i, lines[i])
        elif op == "move":
            lines.insert(draw(st.integers(0, len(lines) - 1)), lines.pop(i))
        elif op == "replace":
            lines[i] = draw(ANY_TEXT)
        elif op == "value" and "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "= " + draw(WRONG)
        elif op == "insert":
            at = draw(st.integers(0, len(lines[i])))
            lines[i] = lines[i][:at] + draw(st.sampled_from(["\0", "é", "\ufeff", '"', "[", "#", ",", " ", "\t",
                                                              "\u2028", "\x7f", "9" * 30])) + lines[i][at:]
        else:
            at = draw(st.integers(0, len(lines[i])))
            lines = lines[:i] + [lines[i][:at]]
    return "\n".join(lines)


@st.composite
def originals(draw):
    """The original's format: primaries (one of them perhaps extended), then logicals."""
    n_primary = draw(st.integers(1, 4))
    extended = draw(st.integers(-1, n_primary - 1))
    n_logical = draw(st.integers(0, 4)) if extended >= 0 else 0
    fill = {False: draw(st.integers(-1, n_primary)), True: draw(st.integers(-1, n_logical))}
    lines, expect = [], []
    kinds = [(False, "extended" if i == extended else draw(st.sampled_from(["linux", "swap", "typeHH"])))
             for i in range(n_primary)] + [(True, draw(st.sampled_from(["linux", "swap", "typeHH"])))
                                            for _ in range(n_logical)]
    for i, (logical, kind) in enumerate(kinds):
        local = i - n_primary if logical else i
        size = "fill" if local == fill[logical] else str(draw(st.integers(1, 1 << 40)))
        if kind == "typeHH":
            byte = draw(st.integers(0, 255))
            kind = "type" + draw(st.sampled_from([f"{byte:02x}", f"{byte:X}"]))
            ptype = f"0x{byte:02x}"
        else:
            ptype = kind
        if draw(st.booleans()):
            lines.append(draw(st.sampled_from(["", "# a comment", "   ", "#"])))
        lines.append(("logical " if logical else "") + f"{kind}{draw(st.sampled_from([' ', '  ', chr(9)]))}{size}"
                     + draw(st.sampled_from(["", " # note", "\t#"])))
        expect.append((ptype, "fill" if size == "fill" else f"{size}MiB", logical))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n"])), expect


SFDISK_GPT_TYPES = ["C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "21686148-6449-6E6F-744E-656564454649",
                    "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"]
SFDISK_NAMES = {"C12A7328-F81F-11D2-BA4B-00A0C93EC93B": "esp", "21686148-6449-6E6F-744E-656564454649": "bios-boot",
                "0FC63DAF-8483-4772-8E79-3D69D8477DE4": "linux", "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F": "swap",
                "0x83": "linux", "0x82": "swap", "0x05": "extended", "0x0f": "extended"}


@st.composite
def sfdisk_dumps(draw):
    label = draw(st.sampled_from(["gpt", "dos"]))
    sector = draw(st.sampled_from([512, 4096]))
    head = [f"label: {label}", "label-id: 0x1234abcd", "device: /dev/vda", "unit: sectors",
            "first-lba: 34", f"sector-size: {sector}"]
    head = draw(st.permutations(head))
    lines, expect = list(head) + [""], []
    if label == "gpt":
        kinds = draw(st.lists(st.sampled_from(SFDISK_GPT_TYPES) | st.uuids().map(str), min_size=1, max_size=8))
    else:
        kinds = draw(st.lists(st.sampled_from(["83", "82", "c", "0x83", "fd"]), min_size=1, max_size=4))
        if len(kinds) < 4 and draw(st.booleans()):
            kinds += ["5"] + draw(st.lists(st.sampled_from(["83", "82"]), min_size=1, max_size=3))
    start = 2048
    for i, kind in enumerate(kinds, 1):
        size = draw(st.integers(1, (MAX_SIZE - 1) // sector // 64))
        name = draw(st.none() | LINE_TEXT.filter(lambda s: '"' not in s)) if label == "gpt" else None
        line = f"/dev/vda{i} : start={start:>12}, size={size:>12}, type={kind}"
        if name is not None:
            line += f', uuid={draw(st.uuids())}, name="{name}"'
        lines.append(line)
        start += size
        ptype = kind.upper() if "-" in kind else f"0x{int(kind, 16):02x}"
        expect.append((SFDISK_NAMES.get(ptype, ptype), size * sector, name or None,
                       label == "dos" and i > 4))
    return "\n".join(lines) + "\n", expect


MACS = st.binary(min_size=6, max_size=6).map(lambda b: b.hex())
CELL = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x0b\x0c\x1c\x1d\x1e"
                             "\x85\u2028\u2029"), max_size=12).map(str.strip).filter(lambda s: not s.startswith("#"))


@st.composite
def install_tables(draw):
    """(text, source, expected rows) of a valid install node table, CSV or TOML."""
    extra = draw(st.lists(COLUMN_KEYS.filter(lambda k: k != "name"), max_size=3, unique=True))
    header = draw(st.permutations(["name"] + extra))
    names = draw(st.lists(CELL.filter(bool), min_size=1, max_size=6, unique=True))
    rows = [{k: (n if k == "name" else draw(CELL)) for k in header} for n in names]
    if draw(st.booleans()):
        return csv_text(header, [[r[k] for k in header] for r in rows]), "t.csv", rows
    typed = [{k: (draw(st.integers(-(1 << 63), (1 << 63) - 1)) if k != "name" and draw(st.booleans()) else v)
              for k, v in r.items()} for r in rows]
    return (toml_tables([("[[node]]", r) for r in typed]), "t.toml",
            [{k: str(v) for k, v in r.items()} for r in typed])


HOST_NAMES = st.builds(lambda a, b, c: a + (b + c if b else ""), st.text("abcXYZ019", min_size=1, max_size=8),
                       st.text("-a1", max_size=3), st.text("z9", min_size=1, max_size=2))


@st.composite
def netboot_tables(draw):
    """(text, parser, expected (name, mac, address, extra)) of a valid boot-kit node table."""
    n = draw(st.integers(1, 6))
    names = draw(st.lists(HOST_NAMES, min_size=n, max_size=n, unique=True))
    macs = draw(st.lists(MACS, min_size=n, max_size=n, unique=True))
    addresses = draw(st.lists(st.none() | st.ip_addresses(v=4).map(str), min_size=n, max_size=n)
                     .filter(lambda a: len(set(x for x in a if x)) == len([x for x in a if x])))
    extra = draw(st.lists(COLUMN_KEYS.map(str.lower).filter(lambda k: k not in ("name", "mac", "address")),
                          max_size=2, unique=True))
    rows = []
    for name, mac, address in zip(names, macs, addresses):
        sep = draw(st.sampled_from([":", "-"]))
        text = sep.join(mac[i:i + 2] for i in range(0, 12, 2))
        text = text.upper() if draw(st.booleans()) else text
        rows.append((name, text, address, {k: draw(CELL) for k in extra}))
    expect = [(name, ":".join(mac[i:i + 2] for i in range(0, 12, 2)), address, ex)
              for (name, _, address, ex), mac in zip(rows, macs)]
    if draw(st.booleans()):
        header = ["name", "mac", "address"] + extra
        return (csv_text(header, [[nm, m, a or ""] + [ex[k] for k in extra] for nm, m, a, ex in rows]),
                "netboot-csv", expect)
    return (toml_tables([("[[node]]", {"name": nm, "mac": m, "address": a, **ex}) for nm, m, a, ex in rows]),
            "netboot-toml", expect)


SIGNIFICANT = st.lists(st.sampled_from(list('[]{}="\',.#:-_ \t\n\r0123456789xabcdefmMiBGk%/\\\0é\u2028') +
                                       ["[[partition]]", "[disk]", "name", "size", "fill", "linux", "logical",
                                        "type", "label: gpt", "label: dos", "size=", "[[node]]", "mac"]),
                      max_size=40).map("".join)


# ------------------------------------------------------------------ properties
# Each property draws a well-formed input and perhaps mutates it: unmutated, it must
# parse as it was written; mutated, it must keep the contract.

def well_formed_or_mutated(cases, text_of):
    return cases.flatmap(lambda c: st.tuples(st.just(c), st.none() | mutated_lines(text_of(c))))


@given(well_formed_or_mutated(manifests(), lambda c: toml_tables(c[0])))
def test_manifests_parse_as_written_or_by_the_rules(case):
    (doc, parts), mutated = case
    if mutated is not None:
        outcome("manifest", mutated)
        return
    m = outcome("manifest", toml_tables(doc))
    assert m is not None
    assert [p.name for p in m.partitions] == [p["name"] for p in parts]
    for p, want in zip(m.partitions, parts):
        assert p.size == parse_size(want["size"]) and p.label == want.get("label")
        assert p.mount == want.get("mount") and p.logical == bool(want.get("logical"))
        assert p.fs == (want["fs"] or ("swap" if want["type"] == "swap" else None))
        assert (p.source is None) == ("source" not in want)


@given(well_formed_or_mutated(originals(), lambda c: c[0]))
def test_partition_descriptions_parse_as_written_or_by_the_rules(case):
    (text, expect), mutated = case
    if mutated is not None:
        outcome("original", mutated)
        return
    m = outcome("original", text)
    assert m is not None and m.disk.table == "mbr"
    assert [(p.type, p.size, p.logical) for p in m.partitions] == \
        [(t, parse_size(size), logical) for t, size, logical in expect]


@given(well_formed_or_mutated(sfdisk_dumps(), lambda c: c[0]))
def test_sfdisk_dumps_parse_as_written_or_by_the_rules(case):
    (text, expect), mutated = case
    if mutated is not None:
        outcome("sfdisk", mutated)
        return
    m = outcome("sfdisk", text)
    assert m is not None and m.disk.device == "/dev/vda"
    assert [(p.type, p.size.bytes, p.label, p.logical) for p in m.partitions] == expect


@given(well_formed_or_mutated(install_tables(), lambda c: c[0]))
def test_install_node_tables_parse_as_written_or_by_the_rules(case):
    (text, source, rows), mutated = case
    kind = "install-toml" if source.endswith(".toml") else "install-csv"
    t = outcome(kind, text if mutated is None else mutated)
    if mutated is None:
        assert t is not None and list(t.rows) == rows


@given(well_formed_or_mutated(netboot_tables(), lambda c: c[0]))
def test_boot_node_tables_parse_as_written_or_by_the_rules(case):
    (text, kind, expect), mutated = case
    t = outcome(kind, text if mutated is None else mutated)
    if mutated is None:
        assert t is not None
        assert [(n.name, n.mac, n.address, dict(n.extra)) for n in t] == expect


# ------------------------------------------------------------------ bytes, through the loaders

LOADERS_BY_KIND = {
    "manifest": (load_manifest, ".toml", ManifestError),
    "original": (lambda path: load_partition_file(path, "original"), ".txt", ManifestError),
    "sfdisk": (lambda path: load_partition_file(path, "sfdisk"), ".dump", ManifestError),
    "install-csv": (nodes.load_table, ".csv", ManifestError),
    "install-toml": (nodes.load_table, ".toml", ManifestError),
    "netboot-csv": (nodetable.load, ".csv", UsageError),
    "netboot-toml": (nodetable.load, ".toml", UsageError),
}
SCRATCH = tempfile.mkdtemp(prefix="kdf-inputs-")
atexit.register(shutil.rmtree, SCRATCH, True)   # (a property cannot take tmp_path)


@given(st.sampled_from(sorted(LOADERS_BY_KIND)),
       st.binary(max_size=200) | (SIGNIFICANT | ANY_TEXT).map(str.encode) |
       st.tuples(SIGNIFICANT, st.binary(max_size=4)).map(lambda t: t[0].encode() + t[1] + t[0].encode()))
def test_any_text_or_bytes_in_a_file_load_or_fail_in_one_line(kind, data):
    """Random text and bytes for every parser, read from a file by its own loader."""
    load, ext, error = LOADERS_BY_KIND[kind]
    path = os.path.join(SCRATCH, "input" + ext)
    with open(path, "wb") as f:
        f.write(data)
    try:
        value = load(path)
    except error as e:
        check_error(str(e), path)
        return
    check_value(kind, value)
