"""Is an artifact usable by this runtime, on this machine, for the profile the caller expects?"""

from __future__ import annotations

import platform

from .exceptions import AbiMismatchError, ProfileMismatchError
from .manifest import RUNTIME_ABI, Manifest

__all__ = ["check_compatible", "host_arch", "host_cpu_features", "required_cpu_features"]

# platform.machine() spellings that denote the same instruction set.
_ARCH_ALIASES = {"amd64": "x86_64", "arm64": "aarch64", "armv7": "armv7l", "armv8l": "armv7l"}

# What the x86_64 profiles' LLVM CPUs may emit, as /proc/cpuinfo names the flags. Code for a CPU
# the machine does not have dies of SIGILL at its first such instruction, mid-inference.
_X86_V2 = ("sse4_2", "ssse3", "popcnt")
_X86_AVX2 = (*_X86_V2, "avx", "avx2", "fma", "f16c", "bmi1", "bmi2", "movbe")
_X86_CPUS = {
    "x86-64-v2": _X86_V2,
    "haswell": _X86_AVX2,
    "skylake-avx512": (*_X86_AVX2, "avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"),
}
# target "mattr" entries (LLVM names) -> cpuinfo flags
_X86_ATTRS = {"avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "bmi": "bmi1",
              "bmi2": "bmi2", "avx512f": "avx512f", "avx512bw": "avx512bw",
              "avx512dq": "avx512dq", "avx512vl": "avx512vl", "avx512cd": "avx512cd"}


def required_cpu_features(target: dict) -> list[str]:
    """The x86 CPU flags (/proc/cpuinfo names) an artifact's code may use, from its profile's
    LLVM target (and a CUDA target's host part): the profiles' CPUs (x86-64-v2, haswell,
    skylake-avx512) and ``+feature`` attributes. Other targets and CPUs: none known (not
    checked)."""
    if isinstance(target.get("host"), dict):
        target = target["host"]
    if "x86_64" not in str(target.get("mtriple", "")):
        return []
    need = list(_X86_CPUS.get(str(target.get("mcpu", "")), ()))
    attrs = target.get("mattr") or []
    for attr in attrs.split(",") if isinstance(attrs, str) else attrs:
        flag = _X86_ATTRS.get(str(attr).lstrip("+"))
        if str(attr).startswith("+") and flag and flag not in need:
            need.append(flag)
    return need


def host_cpu_features(cpuinfo: str = "/proc/cpuinfo") -> set[str] | None:
    """This CPU's flags (the first ``flags`` line of /proc/cpuinfo); None where it cannot be
    read (not Linux)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return set(value.split())
    except OSError:
        return None
    return None


def host_arch() -> str:
    machine = platform.machine().lower()
    return _ARCH_ALIASES.get(machine, machine)


def check_compatible(manifest: Manifest, expected_profile: str | None = None,
                     arch: str | None = None, cpu_features: set[str] | None = None) -> None:
    """Raise unless the artifact matches this runtime's ABI, this machine's architecture (and,
    on x86_64, its CPU's instruction-set extensions: ``cpu_features``, read from /proc/cpuinfo
    when not given; not checked when ``arch`` names another machine) and, when given, the
    profile the caller asked for."""
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
    if arch is not None and cpu_features is None:
        return  # asked about another machine: its CPU is not this one
    need = required_cpu_features(manifest.profile.target)
    have = cpu_features if cpu_features is not None else (host_cpu_features() if need else None)
    if need and have is not None:
        missing = [f for f in need if f not in have]
        if missing:
            raise ProfileMismatchError(
                f"the artifact (profile {manifest.profile.name!r}, CPU "
                f"{manifest.profile.target.get('mcpu', '?')!r}) uses instructions this CPU "
                f"lacks: {', '.join(missing)}; it would stop with an illegal instruction. Use "
                "an artifact of a profile this CPU supports (x86_64 runs on any x86_64 CPU "
                "with SSE4.2)"
            )
