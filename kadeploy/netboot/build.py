"""`kadeploy netboot build OUTDIR`: the boot image of the install system.

A minimal Debian (debootstrap) with a kernel, Python, the disk tools an install needs
and kadeploy itself, plus the /init of ``init.sh``, packed as ``vmlinuz`` and
``initrd.img`` (a zstd-compressed newc cpio that the kernel unpacks into its rootfs).
The debootstrap is the slow part: it is cached as a tarball keyed by the suite, the
mirror and the package list, so a rebuild with another kadeploy takes seconds.

Steps, each timed into ``build.json`` beside the image: debootstrap (or cache),
extract into a private tmpfs, prune what an installer never uses (docs, locales,
drivers for graphics/sound/media), add kadeploy (a wheel of its source tree built and
installed by pip, and its Python dependencies copied as they are installed for this
Python, so the build needs no package index, then byte-compiled by the image's
Python), check that ``ka-d-client --version`` runs in the image, pack. Needs root
(debootstrap, chroot, mount).
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import KadeployError, UsageError
from .ipxe import LOCAL_BOOT_EFI

SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_CACHE = "/var/cache/kadeploy/netboot"

# What the install system holds, and why: the kernel and its modules; Python for
# kadeploy; busybox for udhcpc, poweroff and reboot; the disk tools ka-d-client --install
# runs (sfdisk, mkfs.*, partclone, grub-install for BIOS and UEFI).
PACKAGES = (
    "linux-image-amd64", "kmod", "busybox", "iproute2", "python3", "ca-certificates",
    "util-linux", "fdisk", "gdisk", "e2fsprogs", "xfsprogs", "dosfstools", "btrfs-progs",
    "mtools", "partclone", "grub-pc-bin", "grub-efi-amd64-bin", "grub2-common",
    "tar", "zstd", "openssh-client", "efibootmgr",
)

# Removed from the image: nothing an install runs reads them.
PRUNE = (
    "usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
    "usr/share/lintian", "usr/share/bash-completion", "var/cache/apt", "var/lib/apt/lists",
    "var/log", "usr/share/grub/themes",
    "usr/lib/udev/hwdb.d", "usr/lib/udev/hwdb.bin",   # only udev reads them; none runs here
)
# Kernel module trees an installer does not need (under lib/modules/VERSION/kernel).
PRUNE_MODULES = (
    "drivers/gpu", "sound", "drivers/media", "drivers/staging", "drivers/bluetooth",
    "net/bluetooth", "drivers/net/wireless", "net/wireless", "net/mac80211",
    "drivers/iio", "drivers/hid", "drivers/input/joystick", "drivers/input/touchscreen",
    "drivers/isdn", "drivers/video", "drivers/infiniband", "drivers/net/can", "drivers/net/usb",
    "drivers/usb/gadget", "drivers/usb/serial", "drivers/usb/misc", "drivers/atm", "drivers/mtd",
    "drivers/nfc", "drivers/w1", "drivers/leds", "drivers/hwmon", "drivers/watchdog",
    "drivers/comedi", "drivers/input/misc", "drivers/input/tablet", "net/netfilter",
    "net/ipv4/netfilter", "net/ipv6/netfilter", "net/bridge/netfilter", "net/sched",
)

# Kernel modules an install needs, checked in the image: vfat and its code pages to
# mount the ESP (grub-install for UEFI refuses an unmounted one), and the other file
# systems a manifest may make.
REQUIRED_MODULES = ("vfat", "nls_cp437", "nls_ascii", "nls_utf8", "ext4", "xfs", "btrfs", "efivarfs")

# localboot.efi: the UEFI local boot of an installed node (kadeploy.netboot.ipxe). A
# GRUB image with this configuration built in: it finds the disk whose ESP holds the
# removable-path loader and starts that.
LOCAL_BOOT_CONFIG = """\
search --no-floppy --file --set=root /EFI/BOOT/BOOTX64.EFI
chainloader ($root)/EFI/BOOT/BOOTX64.EFI
boot
echo "kadeploy: no disk with EFI/BOOT/BOOTX64.EFI; back to the firmware"
exit
"""
LOCAL_BOOT_MODULES = ("part_gpt", "part_msdos", "fat", "search", "search_fs_file", "chain",
                      "normal", "echo", "configfile")

ZSTD_LEVEL = 9  # level 19 halves nothing more worth the minutes it costs on 2 cores
INIT_FILES = {"init.sh": "init", "udhcpc.script": "usr/share/kadeploy/udhcpc.script"}


@dataclass
class BuildReport:
    """What ``build.json`` says about one image."""
    suite: str
    mirror: str
    packages: List[str]
    cache_key: str
    cache_hit: bool
    kernel: str = ""
    python: str = ""
    kadeploy: str = ""
    vmlinuz_bytes: int = 0
    initrd_bytes: int = 0
    tree_bytes: int = 0
    seconds: Dict[str, float] = field(default_factory=dict)
    date: str = ""
    machine: str = ""

    def summary(self) -> str:
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        return (f"kernel {self.kernel}: vmlinuz {self.vmlinuz_bytes / 2**20:.1f} MiB, initrd "
                f"{self.initrd_bytes / 2**20:.1f} MiB ({self.tree_bytes / 2**20:.0f} MiB unpacked); "
                f"{steps}")


def cache_key(suite: str, mirror: str, packages: Sequence[str]) -> str:
    text = "\n".join([suite, mirror.rstrip("/"), *sorted(packages)])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def apt_mirror(sources: str = "/etc/apt/sources.list.d/debian.sources") -> str:
    """The Debian mirror this machine uses (deb822 sources), else deb.debian.org."""
    try:
        with open(sources, encoding="utf-8") as f:
            for line in f:
                if line.startswith("URIs:") and "security" not in line:
                    return line.split()[1]
    except OSError:
        pass
    return DEFAULT_MIRROR


def _run(argv: Sequence[str], what: str, **kw) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, **kw)
    except FileNotFoundError:
        raise KadeployError(f"{what}: {argv[0]} is missing (apt-get install {argv[0]})")
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        raise KadeployError(f"{what} failed (exit {p.returncode}): {' | '.join(tail)}")
    return p


def _mount_tmpfs(path: Path, size: str) -> None:
    _run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "kdn-build", str(path)],
         "mounting the build tmpfs")


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _debootstrap(target: Path, suite: str, mirror: str, packages: Sequence[str]) -> None:
    _run(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}",
          suite, str(target), mirror], "debootstrap")


def _cached_rootfs(work: Path, cache_dir: Path, suite: str, mirror: str,
                   packages: Sequence[str], key: str) -> tuple:
    """Extract the cached debootstrap of this package list into work/root, making it
    first if absent. Returns (root, cache hit?)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"kdn-rootfs-{suite}-{key}.tar.zst"
    root = work / "root"
    root.mkdir()
    hit = tarball.exists()
    if not hit:
        _debootstrap(root, suite, mirror, packages)
        tmp = tarball.with_suffix(".partial")
        _run(["sh", "-c", 'tar --numeric-owner --xattrs -C "$1" -c . | zstd -q -T0 -3 -o "$2" -f',
              "sh", str(root), str(tmp)], "caching the debootstrap")
        os.replace(tmp, tarball)   # a half-written cache never passes for a whole one
    else:
        _run(["sh", "-c", 'zstd -q -d -c "$1" | tar --numeric-owner --xattrs -C "$2" -x',
              "sh", str(tarball), str(root)], "extracting the cached debootstrap")
    return root, hit


def _prune(root: Path) -> None:
    for rel in PRUNE:
        shutil.rmtree(root / rel, ignore_errors=True)
    for boot_file in (root / "boot").glob("initrd.img*"):
        boot_file.unlink()   # initramfs-tools' own initrd: this image replaces it
    for kdir in (root / "lib/modules").glob("*/kernel"):
        for rel in PRUNE_MODULES:
            shutil.rmtree(kdir / rel, ignore_errors=True)


def default_source() -> Optional[Path]:
    """The source tree this kadeploy runs from, when it is one (an editable install)."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").exists() else None


def _install_kadeploy(root: Path, work: Path, source: Optional[Path], wheel: Optional[Path]) -> str:
    """pip-install kadeploy and its dependencies into the image's /usr/local; the
    compiled parts are built for this Python, so it must be the image's version."""
    image_py = _run(["chroot", str(root), "python3", "-c",
                     "import sys; print('%d.%d' % sys.version_info[:2])"], "python3 in the image").stdout.strip()
    here_py = "%d.%d" % sys.version_info[:2]
    if image_py != here_py:
        raise UsageError(f"the image has Python {image_py} but this kadeploy runs on {here_py}: "
                         f"run kadeploy netboot build with Python {image_py}")
    if wheel is None:
        if source is None:
            raise UsageError("no kadeploy source tree found: give --source DIR or --wheel FILE")
        wheels = work / "wheels"
        _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(source)],
             "building the kadeploy wheel")
        wheel = next(wheels.glob("kadeploy-*.whl"))
    site = root / f"usr/local/lib/python{image_py}/dist-packages"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-compile",
          "--no-warn-script-location", "--target", str(site), str(wheel)], "installing kadeploy into the image")
    copy_dependencies(site)
    shutil.rmtree(site / "bin", ignore_errors=True)   # their shebangs name this machine's Python
    # Byte code, by the image's own Python and for the image's paths (pip's would name
    # this machine's): without it each node's first ka-d-client compiles kadeploy and
    # its dependencies from source before it registers.
    _run(["chroot", str(root), "python3", "-m", "compileall", "-q", f"/usr/local/lib/python{image_py}/dist-packages"],
         "compiling the byte code of kadeploy and its dependencies in the image")
    bindir = root / "usr/local/bin"
    bindir.mkdir(parents=True, exist_ok=True)
    for prog, entry in (("ka-d-client", "client_main"), ("ka-d-server", "server_main"),
                        ("kadeploy", "kadeploy_main")):
        script = bindir / prog
        script.write_text(f"#!/usr/bin/python3\nfrom kadeploy.entry import {entry}\n{entry}()\n")
        script.chmod(0o755)
    # The proof that kadeploy runs in the image: its own version line, in a chroot.
    out = _run(["chroot", str(root), "/usr/local/bin/ka-d-client", "--version"],
               "ka-d-client --version in the image").stdout
    return " ".join(out.split())


def runtime_requirements(name: str = "kadeploy") -> List[str]:
    """The distributions kadeploy needs at run time, with theirs, as installed here
    (extras such as [test] left out)."""
    from importlib import metadata
    try:
        from packaging.requirements import Requirement
    except ImportError:   # pip vendors it: the build runs pip anyway
        from pip._vendor.packaging.requirements import Requirement

    seen: Dict[str, None] = {}
    todo = [name]
    while todo:
        dist = metadata.distribution(todo.pop())
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            key = req.name.lower().replace("_", "-")
            if key not in seen:
                seen[key] = None
                todo.append(req.name)
    return list(seen)


def copy_dependencies(site: Path) -> List[str]:
    """Copy kadeploy's dependencies, as installed for this Python, into the image's
    site-packages: the versions the tests ran against, and no index needed at build
    time (the image's Python is this one's version, checked above)."""
    from importlib import metadata

    names = runtime_requirements()
    for name in names:
        dist = metadata.distribution(name)
        base = Path(dist.locate_file(""))
        for rel in dist.files or []:
            src = Path(dist.locate_file(rel))
            try:
                inside = src.resolve().relative_to(base.resolve())
            except ValueError:
                continue          # scripts in bin/ and the like: not needed in the image
            if src.suffix == ".pyc" or not src.is_file():
                continue
            dest = site / inside
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest)
    return names


def missing_modules(module_files: Sequence[str], builtin: str, wanted: Sequence[str] = REQUIRED_MODULES) -> List[str]:
    """The wanted modules that are neither among the image's module files nor built
    into its kernel (modules.builtin); a module's name uses - and _ alike."""
    def name(path: str) -> str:
        return path.rsplit("/", 1)[-1].split(".ko", 1)[0].replace("-", "_")
    have = {name(f) for f in module_files} | {name(line.strip()) for line in builtin.splitlines() if line.strip()}
    return [m for m in wanted if m.replace("-", "_") not in have]


def check_modules(root: Path, kernel: str) -> None:
    """After the pruning: every module an install needs is still in the image."""
    moddir = root / "lib/modules" / kernel
    files = [str(p) for p in (moddir / "kernel").rglob("*.ko*")]
    builtin = moddir / "modules.builtin"
    missing = missing_modules(files, builtin.read_text() if builtin.exists() else "")
    if missing:
        raise KadeployError(f"the image's kernel {kernel} lacks the module(s) {', '.join(missing)} "
                            "that an install needs")


def _make_local_boot_efi(root: Path, dest: Path) -> None:
    """grub-mkimage of the image's grub-efi-amd64-bin, run in its chroot."""
    (root / "tmp/localboot.cfg").write_text(LOCAL_BOOT_CONFIG)
    _run(["chroot", str(root), "grub-mkimage", "-O", "x86_64-efi", "-o", "/tmp/localboot.efi",
          "-p", "/EFI/BOOT", "-c", "/tmp/localboot.cfg", *LOCAL_BOOT_MODULES], "grub-mkimage of localboot.efi")
    shutil.move(str(root / "tmp/localboot.efi"), dest)
    (root / "tmp/localboot.cfg").unlink()


def _add_init(root: Path) -> None:
    from importlib import resources
    for name, rel in INIT_FILES.items():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(resources.files(__package__).joinpath(name).read_bytes())
        dest.chmod(0o755)


def _pack(root: Path, initrd: Path) -> None:
    # newc cpio, the format the kernel's initramfs unpacker reads.
    _run(["sh", "-c", f'cd "$1" && find . -print0 | cpio --null -o -H newc --quiet '
                      f'| zstd -q -T0 -{ZSTD_LEVEL} -o "$2" -f', "sh", str(root), str(initrd)],
         "packing the initrd")


def build(outdir: Path, *, cache_dir: Path = Path(DEFAULT_CACHE), mirror: Optional[str] = None,
          source: Optional[Path] = None, wheel: Optional[Path] = None,
          extra_packages: Sequence[str] = (), tmpfs_size: str = "4g",
          log=lambda msg: None) -> BuildReport:
    if os.geteuid() != 0:
        raise UsageError("kadeploy netboot build needs root (debootstrap, chroot, mount)")
    for tool in ("debootstrap", "cpio", "zstd", "chroot"):
        if shutil.which(tool) is None:
            raise KadeployError(f"{tool} is missing: apt-get install {tool if tool != 'chroot' else 'coreutils'}")
    mirror = mirror or apt_mirror()
    packages = sorted(set(PACKAGES) | set(extra_packages))
    key = cache_key(SUITE, mirror, packages)
    outdir.mkdir(parents=True, exist_ok=True)
    report = BuildReport(suite=SUITE, mirror=mirror, packages=packages, cache_key=key, cache_hit=False,
                         date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                         machine=f"{platform.node()} {platform.machine()} {os.cpu_count()} cores")
    work = Path(tempfile.mkdtemp(prefix="kdn-build-"))
    mounted = False
    try:
        _mount_tmpfs(work, tmpfs_size)
        mounted = True
        t = time.monotonic()
        log(f"debootstrap of {len(packages)} packages (cache {cache_dir}, key {key})")
        root, report.cache_hit = _cached_rootfs(work, cache_dir, SUITE, mirror, packages, key)
        report.seconds["cache extract" if report.cache_hit else "debootstrap"] = time.monotonic() - t

        t = time.monotonic()
        _prune(root)
        log("installing kadeploy into the image")
        report.kadeploy = _install_kadeploy(root, work, source or default_source(), wheel)
        _add_init(root)
        _make_local_boot_efi(root, outdir / (LOCAL_BOOT_EFI + ".partial"))
        report.seconds["kadeploy and init"] = time.monotonic() - t

        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        if not kernels:
            raise KadeployError("the image has no kernel in /boot (linux-image-amd64 missing?)")
        report.kernel = kernels[-1].name[len("vmlinuz-"):]
        check_modules(root, report.kernel)
        report.python = _run(["chroot", str(root), "python3", "--version"], "python3").stdout.strip()
        shutil.copyfile(kernels[-1], outdir / "vmlinuz.partial")
        kernels[-1].unlink()    # the kernel is served beside the initrd, not inside it
        report.tree_bytes = _tree_bytes(root)

        t = time.monotonic()
        log("packing the initrd")
        _pack(root, outdir / "initrd.img.partial")
        report.seconds["pack"] = time.monotonic() - t
        os.replace(outdir / (LOCAL_BOOT_EFI + ".partial"), outdir / LOCAL_BOOT_EFI)
        os.replace(outdir / "vmlinuz.partial", outdir / "vmlinuz")
        os.replace(outdir / "initrd.img.partial", outdir / "initrd.img")
        report.vmlinuz_bytes = (outdir / "vmlinuz").stat().st_size
        report.initrd_bytes = (outdir / "initrd.img").stat().st_size
        report.seconds["total"] = sum(report.seconds.values())
        (outdir / "build.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
        return report
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(work)], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
