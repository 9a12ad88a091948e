"""Inside the node's new root, once its file systems are written and mounted: its
identity (hostname, hosts, fstab by the new UUIDs, machine-id, SSH host keys, the
manifest's templates), the hooks, run in a chroot with the node's values in the
environment, and the boot loader."""
from __future__ import annotations

import os
import secrets
import stat
import subprocess
from typing import Dict, List

from .disk import BlockDisk
from .identity import fstab_text, hosts_text, render_files
from .manifest import Manifest, Partition
from .shell import StepFailed, run


class NewRoot:
    """The new root at `root`; `mounted` is the installer's list of what it mounted
    (in order), which this appends to so that one unmount undoes everything."""

    def __init__(self, manifest: Manifest, node: Dict[str, str], root: str,
                 devices: Dict[str, str], disk: BlockDisk, mounted: List[str]) -> None:
        self.m, self.node, self.root = manifest, node, root
        self.devices, self.disk, self.mounted = devices, disk, mounted

    def identity(self) -> dict:
        root = self.root
        etc = os.path.join(root, "etc")
        if not os.path.isdir(etc):
            raise StepFailed("the new root has no /etc")
        uuids = {p.name: self.uuid(p) for p in self.m.partitions if p.fs}
        hostname = self.node["hostname"]
        done = [f"{hostname}: hostname", "hosts", "fstab"]
        _write(os.path.join(etc, "hostname"), hostname + "\n")
        _write(os.path.join(etc, "hosts"), hosts_text(_read(os.path.join(etc, "hosts")), hostname))
        _write(os.path.join(etc, "fstab"), fstab_text(self.m, uuids))
        if self.m.machine_id:
            _write(os.path.join(etc, "machine-id"), secrets.token_hex(16) + "\n", 0o444)
            dbus = os.path.join(root, "var/lib/dbus/machine-id")
            if os.path.isfile(dbus) and not os.path.islink(dbus):
                os.unlink(dbus)
                os.symlink("/etc/machine-id", dbus)
            done.append("machine-id")
        if self.m.ssh_host_keys and os.path.isdir(os.path.join(etc, "ssh")):
            for name in os.listdir(os.path.join(etc, "ssh")):
                if name.startswith("ssh_host_") and "_key" in name:
                    os.unlink(os.path.join(etc, "ssh", name))
            run(["ssh-keygen", "-A", "-f", root], "ssh-keygen -A")
            done.append("ssh host keys")
        values = self.values(uuids)
        for path in render_files(self.m.files, values, root):
            done.append(path)
        return {"detail": ", ".join(done)}

    def values(self, uuids: Dict[str, str]) -> Dict[str, str]:
        """What templates and hooks see: the node's values and the new file systems."""
        v = {k: str(x) for k, x in self.node.items()}
        for name, uuid in uuids.items():
            v[f"uuid_{name}"] = uuid
            v[f"device_{name}"] = self.devices[name]
        v["disk"] = self.disk.path
        return v

    def uuid(self, p: Partition) -> str:
        out = subprocess.run(["blkid", "--probe", "--output", "value", "--match-tag", "UUID",
                              self.devices[p.name]], capture_output=True, text=True)
        uuid = out.stdout.strip()
        if out.returncode != 0 or not uuid:
            raise StepFailed(f"no file system UUID on {self.devices[p.name]} ({p.name})")
        return uuid

    def _chroot_env(self) -> dict:
        uuids = {p.name: self.uuid(p) for p in self.m.partitions if p.fs}
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": "/root", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
        for k, v in self.values(uuids).items():
            env["KADEPLOY_" + k.upper().replace("-", "_")] = v
        return env

    def _bind_system_dirs(self) -> None:
        if os.path.join(self.root, "proc") in self.mounted:
            return
        uuids = {p.name: self.uuid(p) for p in self.m.partitions if p.fs}
        udev = all(os.path.exists(f"/dev/disk/by-uuid/{u}") for u in uuids.values())
        for d in ("dev", "proc", "sys", "run"):
            where = os.path.join(self.root, d)
            if not os.path.isdir(where):
                continue
            if d == "dev" and not udev:
                self._private_dev(where, uuids)
                continue
            run(["mount", "--rbind", "/" + d, where], f"mount --rbind /{d}")
            run(["mount", "--make-rslave", where], "mount --make-rslave")
            self.mounted.append(where)

    def _private_dev(self, where: str, uuids: Dict[str, str]) -> None:
        """Without udev there is no /dev/disk/by-uuid, and grub-mkconfig then names
        the root by its device (/dev/loop1p3, a name the booted clone will not have).
        The new root gets its own /dev instead: a tmpfs with the host's device nodes
        and the by-uuid links udev would make. The host's /dev is not touched."""
        run(["mount", "-t", "tmpfs", "-o", "mode=0755,size=4m", "kadeploy-dev", where],
            "mount a private /dev")
        self.mounted.append(where)
        for entry in os.scandir("/dev"):
            target = os.path.join(where, entry.name)
            st = entry.stat(follow_symlinks=False)
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), target)
            elif stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
                os.mknod(target, stat.S_IMODE(st.st_mode) | stat.S_IFMT(st.st_mode), st.st_rdev)
            elif entry.is_dir() and entry.name in ("pts", "shm", "mqueue"):
                os.mkdir(target)
                run(["mount", "--bind", entry.path, target], f"mount --bind {entry.path}")
                self.mounted.append(target)
        links = os.path.join(where, "disk", "by-uuid")
        os.makedirs(links)
        for name, uuid in uuids.items():
            os.symlink(self.devices[name], os.path.join(links, uuid))

    def in_root(self, command: str, what: str) -> str:
        self._bind_system_dirs()
        return run(["chroot", self.root, "/bin/sh", "-c", command], what, env=self._chroot_env())

    def hooks(self) -> dict:
        for i, hook in enumerate(self.m.hooks, 1):
            self.in_root(hook, f"hook {i}")
        return {"detail": f"{len(self.m.hooks)} hook(s)"}

    def boot_loader(self) -> dict:
        disk = self.disk.path
        if self.m.loader_hook:
            self.in_root(self.m.loader_hook, "boot hook")
            return {"detail": "boot hook"}
        loader, why = self.m.loader, ""
        if loader == "grub":
            loader = "grub-efi" if booted_by_uefi() else "grub-bios"
            why = f" (the node booted by {'UEFI' if loader == 'grub-efi' else 'BIOS'})"
        if loader == "grub-bios":
            self.in_root(f"grub-install --target=i386-pc {disk}", "grub-install")
        else:
            esp = next(p for p in self.m.partitions if p.type == "esp")
            self.in_root(f"grub-install --target=x86_64-efi --efi-directory={esp.mount or '/boot/efi'} "
                         "--removable --no-nvram", "grub-install")
        self.in_root("if command -v update-grub >/dev/null; then update-grub; "
                     "else grub-mkconfig -o /boot/grub/grub.cfg; fi", "grub-mkconfig")
        return {"detail": f"{loader} on {disk}{why}"}


def booted_by_uefi() -> bool:
    """Whether this system was started by UEFI firmware (the kernel then shows it)."""
    return os.path.isdir("/sys/firmware/efi")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, text: str, mode: int = 0o644) -> None:
    tmp = path + ".kadeploy-new"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    if os.path.islink(path):
        os.unlink(path)
    os.replace(tmp, path)
