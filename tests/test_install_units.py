"""The pure parts of installs, without disks or sockets: manifests (and the
original's formats), layouts, the install stream, identity text, node tables."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from kadeploy.install import identity, layout, nodes, order, stream
from kadeploy.install.formats import parse_original, parse_sfdisk_dump
from kadeploy.install.manifest import ManifestError, parse_manifest

GOOD = """\
[disk]
table = "gpt"

[[partition]]
name = "bios"
size = "1MiB"
type = "bios-boot"

[[partition]]
name = "esp"
size = "64MiB"
type = "esp"
fs = "vfat"
mount = "/boot/efi"
source = { image = "/dev/sda1" }

[[partition]]
name = "var"
size = "10%"
fs = "xfs"
mount = "/var"
source = { tar = "/var" }

[[partition]]
name = "root"
size = "fill"
fs = "ext4"
mount = "/"
source = { tar = "/", exclude = ["/proc", "/tmp"] }

[[partition]]
name = "swap"
size = "1GiB"
type = "swap"

[boot]
loader = "grub-bios"
"""


def bad(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as e:
        parse_manifest(text, "m.toml")
    assert str(e.value) == message


def test_a_good_manifest():
    m = parse_manifest(GOOD, "m.toml")
    assert [p.name for p in m.partitions] == ["bios", "esp", "var", "root", "swap"]
    assert m.partition("swap").fs == "swap"
    assert m.partition("root").source.exclude == ("/proc", "/tmp")
    assert m.partition("var").source.exclude == ("/proc", "/sys", "/dev", "/run", "/tmp")
    # Root first, then what is mounted in it; an image after.
    assert [p.name for p in order.streams(m)] == ["root", "var", "esp"]
    assert len(m.digest) == 32 and m.digest != parse_manifest(GOOD + "\n", "m.toml").digest


@pytest.mark.parametrize("edit,message", [
    (("[boot]", "[boot]\ncolour = 1"), "m.toml:37: key 'boot.colour': unknown key"),
    (('size = "10%"', 'size = "10 parsecs"'),
     "m.toml:19: key 'partition[3].size': '10 parsecs' is not a size (e.g. '512MiB', '2GiB', '10%', 'fill')"),
    (('fs = "xfs"', 'fs = "ntfs"'),
     "m.toml:20: key 'partition[3].fs': 'ntfs' is not one of ext4, xfs, vfat, swap, btrfs"),
    (('name = "var"', 'name = "root"'), "m.toml:25: key 'partition[4].name': 'root' names two partitions"),
    (('mount = "/var"', 'mount = "var"'), "m.toml:21: key 'partition[3].mount': 'var' must be an absolute path"),
    (('table = "gpt"', 'table = "mbr"'), "m.toml:7: key 'partition[1].type': bios-boot partitions exist only in a GPT table"),
    (('size = "1GiB"', 'size = "fill"'), "m.toml:4: key 'partition': only one partition (and one logical one) may be 'fill'"),
    (('source = { tar = "/var" }', 'source = { tar = "/var", image = "/dev/sdb" }'),
     "m.toml:22: key 'partition[3].source': give exactly one of tar, image, partclone"),
    (('loader = "grub-bios"', 'loader = "lilo"'), "m.toml:37: key 'boot.loader': 'lilo' is not one of none, grub-bios, grub-efi, grub"),
    (('[disk]', '[disk'), "m.toml:1: not valid TOML: Expected ']' at the end of a table declaration"),
])
def test_bad_manifests_name_line_and_key(edit, message):
    old, new = edit
    assert old in GOOD
    bad(GOOD.replace(old, new, 1), message)


def test_the_grub_loader_needs_an_esp_and_a_bios_boot_partition():
    """grub installs the loader of the node's firmware, so the layout must hold both."""
    both = GOOD.replace('loader = "grub-bios"', 'loader = "grub"')
    assert parse_manifest(both, "m.toml").loader == "grub"
    bad(both.replace('type = "esp"', 'type = "linux"'), "m.toml:37: key 'boot.loader': grub needs a partition of type esp")
    bad(both.replace('type = "bios-boot"', 'type = "linux"'),
        "m.toml:37: key 'boot.loader': grub on GPT needs a partition of type bios-boot")


def test_a_manifest_without_partitions_or_root():
    bad('[disk]\n', "m.toml:1: key 'partition': is required")
    bad('[disk]\n[[partition]]\nname = "a"\nsize = "fill"\nfs = "ext4"\nmount = "/srv"\nsource = { tar = "/srv" }\n',
        "m.toml:2: key 'partition': no partition is mounted on /")


def test_the_original_partition_format():
    m = parse_original("# the original's example\nlinux 2000\nswap 512 # swap\nextended fill\n"
                       "logical linux 1000\nlogical type83 fill\n")
    assert m.disk.table == "mbr"
    assert [(p.type, p.size.text(), p.logical) for p in m.partitions] == [
        ("linux", "2000MiB", False), ("swap", "512MiB", False), ("extended", "fill", False),
        ("linux", "1000MiB", True), ("0x83", "fill", True)]
    placed = layout.plan(m.partitions, "mbr", 8 << 30)
    assert [p.number for p in placed] == [1, 2, 3, 5, 6]
    ext = placed[2]
    assert placed[3].start > ext.start and placed[4].end <= ext.end == 8 << 30 >> 9
    assert [p.type_code for p in placed] == ["83", "82", "5", "83", "83"]
    with pytest.raises(ManifestError, match=r"^partitions:2: 'ntfs' is not linux"):
        parse_original("linux 10\nntfs 20\n")
    with pytest.raises(ManifestError, match=r"^partitions:1: size 'big' is not a number of MB"):
        parse_original("linux big\n")


def test_mbr_on_a_disk_beyond_its_reach_is_refused_unless_sizes_are_fixed():
    """An MBR table addresses 2^32 sectors: on a 3 TiB disk a fill or a percentage
    would silently be of the first 2 TiB. Fixed sizes are placed there; 4 KiB sectors
    reach 16 TiB."""
    three_tib = 3 << 40
    m = parse_original("linux 2000\nswap 512\nextended fill\nlogical linux fill\n")
    with pytest.raises(layout.LayoutError, match=r"^an MBR table reaches only the first 2 TiB of "
                       r"this 3072 GiB disk: partition part3 \(fill\) would not be of the whole disk; "
                       r"use a GPT table"):
        layout.plan(m.partitions, "mbr", three_tib)
    fixed = parse_original("linux 2000\nswap 512\n")
    placed = layout.plan(fixed.partitions, "mbr", three_tib)
    assert placed[-1].end == (2000 + 512 + 1) * 2048
    on_4k = layout.plan(m.partitions, "mbr", three_tib, sector_size=4096)
    assert on_4k[-1].end * 4096 <= three_tib and on_4k[2].end == three_tib // 4096
    need = layout.minimum_bytes(m.partitions, "mbr")      # searched within the reach
    assert need == (2000 + 512 + 1 + 1 + 1) << 20
    layout.plan(m.partitions, "mbr", need)
    whole = parse_original("linux 2000\nlinux fill\n")
    assert layout.plan(whole.partitions, "gpt", three_tib)[-1].end > (2 << 40) >> 9


def test_an_sfdisk_dump():
    dump = """label: gpt
label-id: 5A0D2C5E-0D7B-4C3E-9B2E-6E7F0A1B2C3D
device: /dev/sda
unit: sectors
first-lba: 2048
last-lba: 41943006
sector-size: 512

/dev/sda1 : start=        2048, size=        2048, type=21686148-6449-6E6F-744E-656564454649, uuid=1
/dev/sda2 : start=        4096, size=     1048576, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"
/dev/sda3 : start=     1052672, size=    40890335, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
"""
    m = parse_sfdisk_dump(dump)
    assert m.disk.table == "gpt" and m.disk.device == "/dev/sda"
    assert [(p.type, p.size.text(), p.label) for p in m.partitions] == [
        ("bios-boot", "1MiB", None), ("esp", "512MiB", "EFI"), ("linux", f"{40890335 * 512}B", None)]


def test_the_layout_is_exact_and_checked_against_the_disk():
    m = parse_manifest(GOOD)
    disk = 20 << 30
    placed = layout.plan(m.partitions, "gpt", disk)
    assert all(p.start % 2048 == 0 for p in placed)
    assert [p.sectors for p in placed][:2] == [2048, 131072]
    assert placed[2].sectors == (disk >> 9) // 10 // 2048 * 2048
    assert all(a.end <= b.start for a, b in zip(placed, placed[1:]))
    assert placed[-1].end <= (disk >> 9) - 33
    assert placed[-1].end > (disk >> 9) - 33 - 2048, "fill leaves less than 1 MiB unused"
    script = layout.sfdisk_script(placed, "gpt", {"esp": "EFI"})
    assert script.splitlines()[:3] == ["label: gpt", "unit: sectors",
                                       "start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649"]
    assert 'name="EFI"' in script.splitlines()[3]
    with pytest.raises(layout.LayoutError, match=r"^the layout does not fit the disk"):
        layout.plan(m.partitions, "gpt", 1 << 30)
    need = layout.minimum_bytes(m.partitions, "gpt")
    layout.plan(m.partitions, "gpt", need)
    with pytest.raises(layout.LayoutError):
        layout.plan(m.partitions, "gpt", need - (1 << 20))


def test_sfdisk_takes_the_script(tmp_path):
    """The script is what sfdisk itself writes: its dump shows the planned sectors."""
    if subprocess.run(["which", "sfdisk"], capture_output=True).returncode:
        pytest.skip("no sfdisk (tools/setup-env installs fdisk)")
    img = tmp_path / "disk.img"
    img.write_bytes(b"")
    with open(img, "wb") as f:
        f.truncate(4 << 30)
    m = parse_manifest(GOOD)
    placed = layout.plan(m.partitions, "gpt", 4 << 30)
    subprocess.run(["sfdisk", "--quiet", str(img)], input=layout.sfdisk_script(placed, "gpt", {}),
                   text=True, check=True)
    import json
    got = json.loads(subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True,
                                    check=True).stdout)["partitiontable"]["partitions"]
    assert [(p["start"], p["size"], p["type"]) for p in got] == [
        (p.start, p.sectors, p.type_code) for p in placed]


def test_sfdisk_takes_an_mbr_script_with_logical_partitions(tmp_path):
    if subprocess.run(["which", "sfdisk"], capture_output=True).returncode:
        pytest.skip("no sfdisk (tools/setup-env installs fdisk)")
    m = parse_original("linux 200\nswap 100\nextended fill\nlogical linux 300\nlogical linux fill\n")
    img = tmp_path / "mbr.img"
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    placed = layout.plan(m.partitions, "mbr", 1 << 30)
    subprocess.run(["sfdisk", "--quiet", str(img)], input=layout.sfdisk_script(placed, "mbr", {}),
                   text=True, check=True)
    import json
    got = json.loads(subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, text=True,
                                    check=True).stdout)["partitiontable"]
    assert got["label"] == "dos"
    assert [(int(p["node"].rsplit("img", 1)[1]), p["start"], p["size"], p["type"]) for p in got["partitions"]] == [
        (p.number, p.start, p.sectors, p.type_code) for p in placed]


def _stream_of(steps):
    out = io.BytesIO()
    stream.write_record(out, stream.STREAM_TAG, {"manifest": "m1", "steps": [s for s, _ in steps]})
    for i, (name, chunks) in enumerate(steps):
        stream.write_record(out, stream.STEP_TAG, {"manifest": "m1", "index": i, "partition": name,
                                                   "kind": "image", "fs": None, "size": None})
        fw = stream.FrameWriter(out)
        for c in chunks:
            fw.zeros(len(c)) if not c.strip(b"\0") else fw.data(c)
        fw.end()
        stream.write_record(out, stream.TRAILER_TAG, {"bytes": fw.bytes, "digest": fw.digest})
    stream.write_record(out, stream.END_TAG, {"ok": True})
    return out.getvalue()


def test_the_install_stream_round_trips_and_binds_each_step():
    data = _stream_of([("esp", [b"a" * 3000000, bytes(2 << 20), b"tail"]), ("root", [b"xyz"])])
    inp = io.BytesIO(data)
    assert stream.read_record(inp, stream.STREAM_TAG, "header")["steps"] == ["esp", "root"]
    for i, name in enumerate(["esp", "root"]):
        h = stream.read_record(inp, stream.STEP_TAG, "step")
        assert stream.check_step_header(h, "m1", i, name, "image") is None
        assert "for partition 'esp'" in stream.check_step_header(h, "m1", 1, "root", "image") if i == 0 else True
        assert "manifest" in stream.check_step_header(h, "other", i, name, "image")
        fr = stream.FrameReader(inp, name)
        got = b"".join(bytes(n) if zero else p for zero, n, p in fr)
        t = stream.read_record(inp, stream.TRAILER_TAG, "trailer")
        assert (t["bytes"], t["digest"]) == (fr.bytes, fr.digest) == (len(got), t["digest"])
    assert got == b"xyz"
    assert stream.read_record(inp, stream.END_TAG, "end") == {"ok": True}


def test_a_cut_or_damaged_stream_is_named():
    data = _stream_of([("root", [b"x" * 100000])])
    inp = io.BytesIO(data[:5000])
    stream.read_record(inp, stream.STREAM_TAG, "header")
    stream.read_record(inp, stream.STEP_TAG, "step")
    with pytest.raises(stream.StreamError, match=r"^the stream ended inside the stream of root .*after 0 bytes"):
        list(stream.FrameReader(inp, "the stream of root"))
    with pytest.raises(stream.StreamError, match="not an install stream"):
        stream.read_record(io.BytesIO(b"GARBAGE!" * 4), stream.STREAM_TAG, "the stream header")


def test_identity_text():
    m = parse_manifest(GOOD)
    fstab = identity.fstab_text(m, {"root": "R", "var": "V", "esp": "E", "swap": "S", "bios": "-"})
    assert [l.split("\t")[:3] for l in fstab.splitlines()[2:]] == [
        ["UUID=R", "/", "ext4"], ["UUID=V", "/var", "xfs"], ["UUID=E", "/boot/efi", "vfat"],
        ["UUID=S", "none", "swap"]]
    hosts = identity.hosts_text("127.0.0.1\tlocalhost\n127.0.1.1\tgolden\n::1\tlocalhost\n", "node07")
    assert hosts == "127.0.0.1\tlocalhost\n127.0.1.1\tnode07\n::1\tlocalhost\n"
    from kadeploy.install.manifest import FileTemplate
    t = FileTemplate(path="/etc/x", content="a=$address ${hostname}x {braces}\n")
    assert identity.render(t, {"address": "10.0.0.1", "hostname": "n1"}) == "a=10.0.0.1 n1x {braces}\n"
    with pytest.raises(identity.TemplateError, match=r"uses \$address"):
        identity.render(t, {"hostname": "n1"})


def test_node_tables_and_rules():
    t = nodes.parse_table("# the lab\nname,mac,address,rack\nn1,52:54:00:00:00:01,10.0.0.1,a\n"
                          "n2,52:54:00:00:00:02,10.0.0.2,b\n", "nodes.csv")
    assert nodes.node_values("x{index}", t, 5, "10.0.0.2", "whatever")["rack"] == "b"
    assert nodes.node_values("x{index}", t, 5, "10.9.9.9", "n1")["hostname"] == "n1"
    with pytest.raises(KeyError):
        nodes.node_values("x{index}", t, 5, "10.9.9.9", "nobody")
    assert nodes.node_values("node{index:02}", None, 7, "10.0.0.7", "h")["hostname"] == "node07"
    t2 = nodes.parse_table('[[node]]\nname = "a"\naddress = "10.0.0.1"\nslot = 3\n', "n.toml")
    assert t2.rows[0]["slot"] == "3"
    with pytest.raises(ManifestError, match=r"^nodes.csv:3: node 'n1' is listed twice"):
        nodes.parse_table("name,address\nn1,1\nn1,2\n", "nodes.csv")
    with pytest.raises(ManifestError, match=r"^nodes.csv:2: 3 columns"):
        nodes.parse_table("name,address\nn1,1,extra\n", "nodes.csv")


def test_manifest_check_command(tmp_path):
    good = tmp_path / "m.toml"
    good.write_text(GOOD)
    r = subprocess.run([sys.executable, "-m", "kadeploy", "manifest", "check", str(good)],
                       capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith(f"{good}: ok: gpt, 5 partition(s), 3 stream(s)")
    orig = tmp_path / "parts"
    orig.write_text("linux 500\nswap fill\n")
    r = subprocess.run([sys.executable, "-m", "kadeploy", "manifest", "convert", "--from", "original",
                        str(orig)], capture_output=True, text=True)
    assert r.returncode == 0 and 'table = "mbr"' in r.stdout and 'size = "500MiB"' in r.stdout


def test_the_disk_rule_takes_the_first_fixed_disk_large_enough():
    from kadeploy.install.disk import BlockDisk, choose_by_rule

    def d(name, gib, removable=False, physical=True, ro=False):
        return BlockDisk(name=name, path=f"/dev/{name}", size=gib << 30, removable=removable,
                         read_only=ro, sector_size=512, physical=physical)
    disks = [d("loop0", 100, physical=False), d("sdc", 500), d("sda", 8), d("sdb", 64, removable=True),
             d("nvme0n1", 256), d("sr0", 1, removable=True), d("sdd", 900, ro=True)]
    assert choose_by_rule(disks, 16 << 30).name == "nvme0n1"
    assert choose_by_rule(disks, 300 << 30).name == "sdc"
    assert choose_by_rule(disks, 1000 << 30) is None


def test_a_live_source_is_a_warning_unless_strict(tmp_path):
    """GNU tar exits 1 when a file changes while it reads it: the producer says so in
    the step's trailer, as a warning, or as an error with --strict."""
    import threading
    from kadeploy.install.produce import send_step
    src = tmp_path / "src"
    src.mkdir()
    growing = src / "log"
    growing.write_bytes(os.urandom(1 << 20) * 64)
    m = parse_manifest(f'[disk]\n[[partition]]\nname = "root"\nsize = "fill"\nfs = "ext4"\n'
                       f'mount = "/"\nsource = {{ tar = "{src}", exclude = [] }}\n')
    results = {}
    for strict in (False, True):
        stop = threading.Event()

        def append():
            with open(growing, "ab") as f:
                while not stop.is_set():
                    f.write(b"x" * 4096)
                    f.flush()
        t = threading.Thread(target=append)
        t.start()
        try:
            out = io.BytesIO()
            error = send_step(out, m.digest, 0, m.partition("root"), strict)
        finally:
            stop.set()
            t.join()
        inp = io.BytesIO(out.getvalue())
        stream.read_record(inp, stream.STEP_TAG, "step")
        fr = stream.FrameReader(inp, "root")
        for _ in fr:
            pass
        results[strict] = (error, stream.read_record(inp, stream.TRAILER_TAG, "trailer"))
    error, trailer = results[False]
    assert error is None and trailer["status"] == 1 and "changed while tar read" in trailer["warning"]
    error, trailer = results[True]
    assert "--strict" in error and trailer["error"] == error and trailer["warning"] is None


MANIFEST_PAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "man", "kadeploy-manifest.5")


def test_the_manifest_page_lints_clean_and_names_every_key():
    import re
    import shutil
    for argv in (["groff", "-man", "-ww", "-z", MANIFEST_PAGE], ["mandoc", "-Tlint", MANIFEST_PAGE]):
        if shutil.which(argv[0]) is None:
            pytest.skip(f"no {argv[0]} (tools/setup-env installs it)")
        r = subprocess.run(argv, capture_output=True, text=True)
        assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    src = open(os.path.join(os.path.dirname(MANIFEST_PAGE), "..", "kadeploy", "install",
                            "manifest.py")).read()
    keys = set(re.findall(r'\.get\("(\w+)"', src)) | {"source", "exclude", "tar", "image", "partclone"}
    page = open(MANIFEST_PAGE).read().replace("\\-", "-").replace("\\_", "_")
    tables = set(re.findall(r'top\.get\("(\w+)"', src))
    for key in sorted(keys):
        if key in tables:
            assert re.search(rf"^\.SS \[+{key}\]+$", page, re.M), f"no section [{key}] in the page"
        else:
            assert re.search(rf"^\.B {key}$", page, re.M), f"kadeploy-manifest(5) does not document {key!r}"


def test_the_producer_refuses_a_manifest_changed_since_the_server_read_it(tmp_path):
    from kadeploy.install.produce import produce
    path = tmp_path / "m.toml"
    path.write_text(GOOD)
    digest = parse_manifest(GOOD).digest
    path.write_text(GOOD.replace("1GiB", "2GiB"))
    with pytest.raises(ManifestError, match="changed since the server read it"):
        produce(str(path), False, io.BytesIO(), digest)


def test_what_is_mounted_before_each_tar():
    text = GOOD + '\n[[partition]]\nname = "srv"\nsize = "1GiB"\nfs = "btrfs"\nmount = "/srv"\n' \
                  '\n[[partition]]\nname = "cache"\nsize = "1GiB"\nfs = "ext4"\nmount = "/var/cache"\n'
    m = parse_manifest(text)
    before = {p.name: [q.name for q in order.mounts_before(m, p)] for p in order.streams(m)
              if p.source.kind == "tar"}
    # / first, with /srv (made here, nothing sent into it: the root's /srv lands in it);
    # /var with /var/cache; the ESP, an image, is mounted after it is written.
    assert before == {"root": ["root", "srv"], "var": ["root", "var", "cache"]}


# Found by fuzzing (tests/test_fuzz_inputs.py): each raised another exception, or a
# message of two lines, before its fix.
M1 = '[disk]\n[[partition]]\nname = "a"\nsize = "fill"\n'


@pytest.mark.parametrize("text,message", [
    ('[disk]\nmin_size = true\n' + M1[6:], "m.toml:2: key 'disk.min_size': must be a string or a whole number"),
    ('[disk]\n[[partition]]\nname = "a"\nsize = 1.5\n', "m.toml:4: key 'partition[1].size': must be a string or a whole number"),
    ('[disk]\n[[partition]]\nname = "a"\nsize = "fill"\ntype = 3\n', "m.toml:5: key 'partition[1].type': must be a string"),
    (M1 + '[identity]\nhostname = "{index[0]}"\n', "m.toml:6: key 'identity.hostname': '{index[0]}' is not a name rule "
     "('index[0]' is not one of index, position, address, hostname); use e.g. 'node{index:02}'"),
    (M1 + '[identity]\nhostname = "{name}"\n', "m.toml:6: key 'identity.hostname': '{name}' is not a name rule "
     "('name' is not one of index, position, address, hostname); use e.g. 'node{index:02}'"),
    (M1 + '[identity]\nhostname = "n{index:>999999999}"\n', "m.toml:6: key 'identity.hostname': 'n{index:>999999999}' "
     "is not a name rule (the format '>999999999' is wider than a host name); use e.g. 'node{index:02}'"),
    ('a = ' + '[' * 2000, "m.toml:1: not valid TOML here: nested too deeply"),
    ('a = ' + '{b = ' * 2000, "m.toml:1: not valid TOML here: nested too deeply"),
    ('a = ' + '1' * 5000, "m.toml:1: not valid TOML here: Exceeds the limit (4300 digits) for integer string conversion"),
    ('[disk]\n[[partition]]\nname = "a"\nsize = 0x' + 'f' * 4000 + '\n', "m.toml:4: an integer beyond the 64 bits TOML allows"),
    ('[disk]\n[[partition]]\nname = "a"\nsize = "' + '9' * 40 + 'MiB"\n',
     f"m.toml:4: key 'partition[1].size': '{'9' * 40}'...: larger than any disk (16 EiB)"),
    (M1 + '"two\\nlines" = 1\n', "m.toml:2: key 'partition[1].\"two\\nlines\"': unknown key"),
    ('[disk]\n[[partition]]\nname = "a"\nsize = "fill"\nfs = "ext4"\nmount = "/\\nx"\n'
     '[[partition]]\nname = "b"\nsize = "1MiB"\nfs = "ext4"\nmount = "/\\nx"\n',
     "m.toml:11: key 'partition[2].mount': '/\\nx' is the mount point of two partitions"),
])
def test_odd_manifests_fail_in_one_line(text, message):
    bad(text, message)


def test_a_percentage_is_shown_as_it_reads_back():
    from kadeploy.install.manifest import parse_size
    for text in ("12.3456789%", "0.00001%", "33.333333333333336%", "50%"):
        assert parse_size(text).text() == text


def test_a_manifest_or_description_that_is_not_utf8(tmp_path):
    from kadeploy.install.cli import _load
    from kadeploy.install.manifest import load_manifest
    path = tmp_path / "bad"
    path.write_bytes(b"linux 100\n\xff\n")
    for load in (load_manifest, lambda p: _load(p, "original"), lambda p: _load(p, "sfdisk")):
        with pytest.raises(ManifestError, match=rf"^{path}:1: not UTF-8 text$"):
            load(str(path))


@pytest.mark.parametrize("parse,text,message", [
    (parse_original, "linux \u00b2\n", "partitions:1: size '\u00b2' is not a number of MB or 'fill'"),
    (parse_original, "linux " + "1" * 5000 + "\n", f"partitions:1: size '{'1' * 40}'...: larger than any disk (16 EiB)"),
    (parse_original, "linux 17592186044416\n", "partitions:1: size '17592186044416MiB': larger than any disk (16 EiB)"),
    (parse_sfdisk_dump, "label: gpt\n/dev/sda1 : start=1, size=10, type=zz\n",
     "sfdisk-dump:2: type='zz' is neither a GUID nor an MBR hex byte"),
    (parse_sfdisk_dump, "label: gpt\nsector-size: x\n", "sfdisk-dump:2: sector-size 'x' is not a power of two from 512 to 65536"),
    (parse_sfdisk_dump, "label: gpt\n/dev/sda1 : start=1, size=\u00b2\n",
     "sfdisk-dump:2: partition line without a size in sectors: '/dev/sda1 : start=1, size=\u00b2'"),
])
def test_odd_partition_descriptions_fail_in_one_line(parse, text, message):
    with pytest.raises(ManifestError) as e:
        parse(text)
    assert str(e.value) == message


def test_an_sfdisk_label_with_control_characters_reads_as_it_is():
    """partitions_to_toml wrote control characters raw, which TOML refuses."""
    m = parse_sfdisk_dump('label: gpt\n/dev/sda1 : start=1, size=2048, name="a\x01b\x7f\\\\"\n')
    assert m.partitions[0].label == "a\x01b\x7f\\\\"


@pytest.mark.parametrize("text,source,message", [
    ('name\n"' + "a" * 200_000 + '"\n', "n.csv", "n.csv:2: not CSV: field larger than field limit (131072)"),
    ('[[node]]\nname = "a"\nb = 0x' + "f" * 4000 + "\n", "n.toml", "n.toml:1: an integer beyond the 64 bits TOML allows"),
    ('node = ' + "[" * 2000, "n.toml", "n.toml:1: not valid TOML here: nested too deeply"),
    ("# the lab\n\nname,address\n# rack a\nn1,10.0.0.1\n\nn1,10.0.0.2\n", "n.csv", "n.csv:7: node 'n1' is listed twice"),
    ("name,address\nn1,10.0.0.1,x\n", "n.csv", "n.csv:2: 3 columns, the header has 2"),
    ("name,name\nn1,n2\n", "n.csv", "n.csv:1: column 'name' is named twice"),
    ('[[node]]\nname = "a"\n\n[[node]]\nname = "b"\nx = [1]\n', "n.toml", "n.toml:4: a [[node]] holds only strings and numbers"),
])
def test_odd_node_tables_fail_in_one_line_at_their_line(text, source, message):
    with pytest.raises(ManifestError) as e:
        nodes.parse_table(text, source)
    assert str(e.value) == message


def test_a_node_table_that_is_not_utf8(tmp_path):
    path = tmp_path / "nodes.csv"
    path.write_bytes(b"name\n\xff\n")
    with pytest.raises(ManifestError, match=rf"^{path}:1: not UTF-8 text$"):
        nodes.load_table(str(path))


def test_a_line_break_of_any_kind_in_a_name_rule_stays_escaped():
    """Found by atheris (fuzz/fuzz_inputs.py): a form feed in a rule's field name broke
    the message in two lines (str.splitlines, and terminals, break at \\x0c)."""
    bad(M1 + '[identity]\nhostname = "node{in\\fdex:02}"\n',
        "m.toml:6: key 'identity.hostname': 'node{in\\x0cdex:02}' is not a name rule "
        "('in\\x0cdex' is not one of index, position, address, hostname); use e.g. 'node{index:02}'")
    from kadeploy.textfiles import one_line
    assert one_line("a\nb\x0bc\x1dd\x85e\u2028f\u2029g\rh") == "a\\nb\\x0bc\\x1dd\\x85e\\u2028f\\u2029g\\rh"
