"""The iPXE scripts the boot kit serves, as text. Pure: no I/O.

iPXE first fetches ``/boot.ipxe`` (the URL dnsmasq gives it), which chains to the
node's own script by its MAC. A node's script follows its state: ``install`` loads the
install system's kernel and initramfs over HTTP with the kernel command line that
tells /init where the server is; ``local`` boots the local disk, so a node that
reboots after its install does not install again; ``ignore`` tells an unknown node so
on its console and leaves it to the next boot device.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

HEADER = "#!ipxe\n"
LOCAL_BOOT_EFI = "localboot.efi"   # made by kadeploy netboot build (build.py)


def chain_script(base_url: str) -> str:
    """/boot.ipxe: hand over to the node's own script, named by its MAC."""
    return (HEADER +
            "echo kadeploy: ${net0/mac} asks for its boot script\n"
            f"chain --autofree {base_url}/node/${{net0/mac:hexhyp}}/boot.ipxe || goto failed\n"
            "exit 0\n"   # the node's script ended well (e.g. it chose the local disk)
            ":failed\n"
            "isset ${kadeploy-local} && exit 1 ||\n"   # UEFI local boot (local_script): no message
            "echo kadeploy: no boot script from the server; booting from the next device\n"
            "sleep 5\n"
            "exit 1\n")


@dataclass(frozen=True)
class InstallBoot:
    """What the install system needs on its kernel command line."""
    base_url: str                    # http://server:port of the kit
    node_url: str                    # where /init reports (base_url/node/MAC)
    kernel_args: Sequence[str] = ()  # e.g. console=ttyS0,115200
    params: Mapping[str, str] = field(default_factory=dict)  # kadeploy.server=, session=, ...

    def cmdline(self, mac_hyphens: str) -> str:
        words = ["initrd=initrd.img", f"BOOTIF=01-{mac_hyphens}", "rdinit=/init",
                 f"kadeploy.url={self.node_url}"]
        words += [f"kadeploy.{key}={value}" for key, value in self.params.items()
                  if value is not None and value != ""]
        words += list(self.kernel_args)
        for word in words:
            if any(c.isspace() for c in word) or '"' in word:
                raise ValueError(f"kernel argument {word!r} contains a space or a quote")
        return " ".join(words)


def install_script(name: str, mac: str, boot: InstallBoot) -> str:
    mac_hyphens = mac.replace(":", "-")
    return (HEADER +
            f"echo kadeploy: {name} ({mac}) boots the install system\n"
            f"kernel {boot.base_url}/vmlinuz {boot.cmdline(mac_hyphens)} || goto failed\n"
            f"initrd {boot.base_url}/initrd.img || goto failed\n"
            "boot || goto failed\n"
            ":failed\n"
            f"echo kadeploy: {name} could not load the install system; retrying in 10 s\n"
            "sleep 10\n"
            "reboot\n")


def local_script(name: str, base_url: str) -> str:
    """Boot the local disk. BIOS: SAN-boot drive 0x80. UEFI: iPXE cannot boot a local
    disk, and returning to the firmware is unreliable (Debian's iPXE hangs in OVMF on
    exit; a success would stop the firmware at its boot menu), so it chains the kit's
    localboot.efi, a GRUB that finds the disk's EFI/BOOT/BOOTX64.EFI and starts it; if
    that fails, it returns an error to the firmware, which tries its next boot entry."""
    return (HEADER +
            f"echo kadeploy: {name} is installed; booting from its disk\n"
            "iseq ${platform} efi && goto efi ||\n"
            "sanboot --no-describe --drive 0x80 || goto bios\n"
            ":bios\n"
            "exit 0\n"      # the BIOS tries its next boot device
            ":efi\n"
            f"chain {base_url}/{LOCAL_BOOT_EFI} ||\n"
            "set kadeploy-local 1\n"
            "exit 1\n")


def ignore_script(mac: str) -> str:
    return (HEADER +
            f"echo kadeploy: {mac} is not in the node table; nothing to boot here\n"
            "sleep 5\n"
            "exit 1\n")
