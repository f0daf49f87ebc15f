"""Is an artifact usable by this runtime, on this machine, for the profile the caller expects?"""

from __future__ import annotations

import platform

from .exceptions import AbiMismatchError, ProfileMismatchError
from .manifest import RUNTIME_ABI, Manifest

__all__ = ["check_compatible", "host_arch"]

# platform.machine() spellings that denote the same instruction set.
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "armv7": "armv7l", "armv8l": "armv7l"}


def host_arch() -> str:
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


def check_compatible(manifest: Manifest, expected_profile: str | None = None,
                     arch: str | None = None) -> None:
    """Raise unless the artifact matches this runtime's ABI, this machine's architecture and,
    when given, the profile the caller asked for."""
    for key, version in RUNTIME_ABI.items():
        if manifest.abi.get(key) != version:
            raise AbiMismatchError(
                f"the artifact was built for {key} {manifest.abi.get(key)!r} but this runtime "
                f"provides {version!r}; recompile the model or install the matching "
                "edgeforge-runtime"
            )
    if expected_profile is not None and manifest.profile.name != expected_profile:
        raise ProfileMismatchError(
            f"the artifact was built for profile {manifest.profile.name!r}, not "
            f"{expected_profile!r}"
        )
    machine = _ARCH_ALIASES.get(arch.lower(), arch.lower()) if arch else host_arch()
    if _ARCH_ALIASES.get(manifest.profile.arch, manifest.profile.arch) != machine:
        raise ProfileMismatchError(
            f"the artifact was built for {manifest.profile.arch} (profile "
            f"{manifest.profile.name!r}) but this machine is {machine}"
        )
