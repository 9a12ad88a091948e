"""Coverage-guided fuzzing, with atheris (libFuzzer), of the files an admin writes: the
install manifest (kadeploy.install.manifest), the original's partition description and
sfdisk dumps (kadeploy.install.formats), the install node table (kadeploy.install.nodes)
and the boot kit's node table (kadeploy.netboot.nodetable), CSV and TOML.

    .venv/bin/python fuzz/fuzz_inputs.py -max_total_time=600 -max_len=4096

The first byte of an input chooses the parser (7) and the mode (4):
- text: the rest, decoded as the loaders decode a file (UTF-8, universal newlines);
  bytes that are not UTF-8 stop there (the loaders refuse them in one line, which
  tests/test_fuzz_inputs.py checks through real files);
- any text: the rest, bad UTF-8 replaced by U+FFFD, so that every input is text;
- overwrite, insert: a well-formed input of that parser (TEMPLATES) with the rest
  written over it, or inserted, at a place the next two bytes choose (the third byte
  says how much to cut), so that the fuzzer starts deep in the parser's checks.
The contract is that of tests/test_fuzz_inputs.py (tests/input_rules.py): a value that
obeys the parser's rules (rendered back where it can be), or the documented error in one
line naming the source; anything else is a crash.
"""
import io
import os
import sys

import atheris

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

with atheris.instrument_imports():
    import kadeploy.install.formats  # noqa: F401
    import kadeploy.install.manifest  # noqa: F401
    import kadeploy.install.nodes  # noqa: F401
    import kadeploy.netboot.nodetable  # noqa: F401
    import kadeploy.textfiles  # noqa: F401

import input_rules  # noqa: E402 (the rules: not instrumented, they are the oracle)

KINDS = sorted(input_rules.PARSERS)
TEMPLATES = {
    "manifest": """[disk]
table = "mbr"
min_size = "8GiB"

[[partition]]
name = "root"
size = "fill"
fs = "ext4"
label = "root"
mount = "/"
mount_options = "noatime"
source = { tar = "/srv/image", exclude = ["/proc", "/tmp"] }

[[partition]]
name = "swap"
size = "10%"
type = "swap"

[[partition]]
name = "data"
size = "512MiB"
type = "83"
fs = "xfs"
mount = "/data"
mkfs_options = ["-f"]

[identity]
hostname = "node{index:02}"
machine_id = false

[[file]]
path = "/etc/motd"
content = "this is $hostname\\n"
mode = "0644"

[[hook]]
run = "update-initramfs -u"

[boot]
loader = "grub-bios"
""",
    "original": "# the original's example\nlinux 2000\nswap 512 # swap\nextended fill\n"
                "logical linux 1000\nlogical type83 fill\n",
    "sfdisk": """label: gpt
label-id: 5A0D2C5E-0D7B-4C3E-9B2E-6E7F0A1B2C3D
device: /dev/sda
unit: sectors
first-lba: 2048
sector-size: 512

/dev/sda1 : start=        2048, size=        2048, type=21686148-6449-6E6F-744E-656564454649, uuid=1
/dev/sda2 : start=        4096, size=     1048576, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI"
/dev/sda3 : start=     1052672, size=    40890335, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4
""",
    "install-csv": "# the lab\nname,mac,address,rack\nn1,52:54:00:00:00:01,10.0.0.1,a\n"
                   "\"n2\",52:54:00:00:00:02,10.0.0.2,\"b, c\"\n",
    "install-toml": '[[node]]\nname = "a"\naddress = "10.0.0.1"\nslot = 3\n\n[[node]]\nname = "b"\n',
    "netboot-csv": "# the test cluster\nname,mac,address,rack\nnode1,52:54:00:6B:64:01,198.18.0.11,a\n"
                   "node2,52-54-00-6b-64-02,,b\n",
    "netboot-toml": '[[node]]\nname = "n1"\nmac = "52:54:00:00:00:01"\n\n'
                    '[[node]]\nname = "n2"\nmac = "52:54:00:00:00:02"\naddress = "10.0.0.2"\n',
}
assert set(TEMPLATES) == set(KINDS)


def as_the_loader_reads(data: bytes, errors: str = "strict") -> str:
    """What open(path, encoding="utf-8").read() gives for these bytes."""
    return io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors=errors).read()


def one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    kind = KINDS[data[0] % len(KINDS)]
    mode = data[0] // len(KINDS) % 4
    body = data[1:]
    if mode >= 2:   # edit a well-formed input
        template = TEMPLATES[kind].encode()
        at = int.from_bytes(body[:2], "big") % (len(template) + 1)
        cut = body[2] % 32 if len(body) > 2 else 0
        piece = body[3:]
        body = template[:at] + piece + template[at + (len(piece) if mode == 2 else cut):]
    try:
        text = as_the_loader_reads(body, "replace" if mode == 1 else "strict")
    except UnicodeDecodeError:
        return
    input_rules.outcome(kind, text)


if __name__ == "__main__":
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()
