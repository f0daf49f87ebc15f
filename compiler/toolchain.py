"""What the build machine offers: linkers, qemu-user, the sysroots, CPU features."""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass
from pathlib import Path

from .exceptions import ToolchainError
from .profiles import Profile

__all__ = ["Emulator", "emulator_for", "host_cpu_flags", "repo_root", "require_cc",
           "sysroot_dir"]

#: Debian architecture names of the sysroots built by scripts/sysroot.sh.
_DEBIAN_ARCH = {"aarch64": "arm64", "armv7l": "armhf"}
_QEMU = {"aarch64": "qemu-aarch64", "armv7l": "qemu-arm"}


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def host_cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def require_cc(profile: Profile) -> str:
    cc = profile.toolchain.cc
    if shutil.which(cc) is None:
        pkg = {"aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
               "arm-linux-gnueabihf-g++": "g++-arm-linux-gnueabihf"}.get(cc, "g++")
        raise ToolchainError(
            f"profile {profile.name!r} links with {cc}, which is not installed; "
            f"install the Debian package {pkg} (scripts/setup.sh does)"
        )
    return cc


def sysroot_dir(arch: str) -> Path:
    base = os.environ.get("EDGEFORGE_SYSROOT_DIR")
    root = Path(base) if base else repo_root() / ".cache" / "sysroot"
    return root / _DEBIAN_ARCH.get(arch, arch)


@dataclass(frozen=True)
class Emulator:
    """How to run the sysroot's Python for a foreign architecture under qemu-user."""

    arch: str
    qemu: str
    sysroot: Path

    def python_command(self) -> list[str]:
        return [self.qemu, "-L", str(self.sysroot), str(self.sysroot / "usr/bin/python3.11")]

    def env(self, extra_path: list[Path]) -> dict[str, str]:
        paths = [str(self.sysroot / "site"), *map(str, extra_path)]
        return {
            "QEMU_LD_PREFIX": str(self.sysroot),
            "PYTHONHOME": str(self.sysroot / "usr"),
            "PYTHONPATH": os.pathsep.join(paths),
            "PYTHONNOUSERSITE": "1",
            "EDGEFORGE_TVM_RUNTIME_DIR": str(self.sysroot / "tvm"),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        }


def emulator_for(arch: str) -> Emulator | str:
    """An :class:`Emulator` for ``arch``, or the reason none is usable (a string)."""
    if arch == platform.machine():
        return f"{arch} is the host architecture"
    qemu = shutil.which(_QEMU.get(arch, ""))
    if qemu is None:
        return f"{_QEMU.get(arch, 'qemu-user')} is not installed (Debian package qemu-user)"
    root = sysroot_dir(arch)
    missing = [p for p in ("usr/bin/python3.11", "site/tvm_ffi", "tvm/libtvm_runtime.so")
               if not (root / p).exists()]
    if missing:
        return (f"the {_DEBIAN_ARCH.get(arch, arch)} sysroot at {root} lacks {', '.join(missing)} "
                f"(run scripts/sysroot.sh {_DEBIAN_ARCH.get(arch, arch)})")
    return Emulator(arch=arch, qemu=qemu, sysroot=root)
