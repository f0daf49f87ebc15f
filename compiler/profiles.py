"""Target profiles: named, versioned descriptions of where an artifact will run.

Built-in profiles live in ``data/profiles.json``; users add or override profiles with their own
JSON file of the same shape (``{"profiles": [...]}``), passed as ``--profiles-file`` or
``EDGEFORGE_PROFILES_FILE``.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .exceptions import ProfileError

__all__ = ["Profile", "ProfileRegistry", "Toolchain", "load_profiles"]

_NAME = r"^[a-z0-9][a-z0-9._-]{0,62}$"


class Toolchain(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: C++ compiler driver used to link the exported shared library (g++ or a cross g++).
    cc: str
    #: CUDA compiler used to turn generated kernels into a fatbin (cuda profiles only).
    cuda: Literal["nvcc"] | None = None


class Profile(BaseModel):
    """One target profile. ``target`` is the TVM target as a JSON dict (TVM 0.27 rejects the
    old CLI strings); ``arch`` is ``platform.machine()`` on the device."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=_NAME)
    revision: int = Field(ge=1)
    description: str
    arch: Literal["x86_64", "aarch64", "armv7l"]
    device: Literal["cpu", "cuda"]
    target: dict[str, Any]
    toolchain: Toolchain
    #: How the build machine can run the artifact to check its numerics.
    verify: Literal["native", "qemu-user", "none"]
    #: /proc/cpuinfo flags the build machine needs to run a ``native`` check.
    host_features: list[str] = Field(default_factory=list)
    runtime_platform: str

    @field_validator("target")
    @classmethod
    def _target_shape(cls, v: dict[str, Any]) -> dict[str, Any]:
        kind = v.get("kind")
        if kind not in ("llvm", "cuda"):
            raise ValueError(f"target.kind must be 'llvm' or 'cuda', not {kind!r}")
        if kind == "cuda":
            arch = v.get("arch", "")
            if not (isinstance(arch, str) and arch.startswith("sm_") and arch[3:].isdigit()):
                raise ValueError("a cuda target needs arch like 'sm_87'")
            if not isinstance(v.get("host"), dict) or v["host"].get("kind") != "llvm":
                raise ValueError("a cuda target needs an llvm 'host' target dict")
        elif "mtriple" not in v:
            raise ValueError("an llvm target needs 'mtriple'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if (self.device == "cuda") != (self.target["kind"] == "cuda"):
            raise ValueError("device 'cuda' goes with a cuda target, 'cpu' with an llvm one")
        if self.device == "cuda" and self.toolchain.cuda is None:
            raise ValueError("cuda profiles need toolchain.cuda")
        return self

    @property
    def cuda_arch(self) -> str | None:
        return self.target["arch"] if self.device == "cuda" else None

    @property
    def host_target(self) -> dict[str, Any]:
        return self.target["host"] if self.device == "cuda" else self.target


class _ProfileFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    schema_: int = Field(default=1, alias="schema")
    profiles: list[Profile]


class ProfileRegistry:
    """Profiles by name; later sources override earlier ones of the same name."""

    def __init__(self, profiles: list[Profile]) -> None:
        self._by_name: dict[str, Profile] = {}
        for p in profiles:
            self._by_name[p.name] = p

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_name.values())

    def names(self) -> list[str]:
        return list(self._by_name)

    def get(self, name: str) -> Profile:
        try:
            return self._by_name[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, self._by_name, n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ProfileError(
                f"unknown profile {name!r}.{hint} Known profiles: {', '.join(self._by_name)} "
                "(`edgeforge profiles` lists them)."
            ) from None


def _parse(text: str, source: str) -> list[Profile]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileError(f"{source}: not valid JSON: {e}") from e
    try:
        return _ProfileFile.model_validate(raw).profiles
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        names = []
        if isinstance(raw, dict) and isinstance(raw.get("profiles"), list):
            for err in e.errors():
                loc = err["loc"]
                if len(loc) > 1 and loc[0] == "profiles" and isinstance(loc[1], int):
                    entry = raw["profiles"][loc[1]]
                    if isinstance(entry, dict):
                        names.append(str(entry.get("name", f"#{loc[1]}")))
        which = f" (profile {', '.join(dict.fromkeys(names))})" if names else ""
        raise ProfileError(f"{source}: invalid profile entry{which}: {problems}") from e


def load_profiles(extra_file: str | os.PathLike[str] | None = None) -> ProfileRegistry:
    """The built-in profiles, plus those of ``extra_file`` / ``$EDGEFORGE_PROFILES_FILE``."""
    builtin = resources.files("compiler").joinpath("data/profiles.json").read_text("utf-8")
    profiles = _parse(builtin, "built-in profiles")
    extra = extra_file or os.environ.get("EDGEFORGE_PROFILES_FILE")
    if extra:
        path = Path(extra)
        try:
            text = path.read_text("utf-8")
        except OSError as e:
            raise ProfileError(f"cannot read profile file {path}: {e.strerror}") from e
        profiles += _parse(text, str(path))
    return ProfileRegistry(profiles)
