"""The artifact manifest, format version 1 (see ``FORMAT.md`` beside this module).

The runtime owns this definition; the compiler builds a :class:`Manifest` and serialises it with
:meth:`Manifest.to_json`. Parsing is strict: unknown top-level fields, wrong types or a different
``format_version`` raise :class:`~edgeforge_runtime.exceptions.ManifestError`.

Plain dataclasses rather than pydantic keep the device install small; the compiler side wraps
these in its own pydantic models where it needs them.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .dtypes import LOWBIT_STORAGE
from .exceptions import ManifestError

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "RUNTIME_ABI",
    "FileEntry",
    "Manifest",
    "ModelInfo",
    "ProfileInfo",
    "TensorSpec",
    "Verification",
]

FORMAT_NAME = "edgeforge-artifact"
FORMAT_VERSION = 1
#: The runtime ABI an artifact is built against: the TVM release and the tvm-ffi release whose
#: ABI the exported library links to. Both sides import this constant, so they cannot drift.
RUNTIME_ABI: dict[str, str] = {"tvm": "0.27.0.post1", "tvm_ffi": "0.1.14.post1"}

_MEMBER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_DTYPES = frozenset(
    {"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64",
     "uint8", "uint16", "uint32", "uint64", "bool"}
) | frozenset(LOWBIT_STORAGE)


def _req(d: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in d:
        raise ManifestError(f"manifest: missing field {where}.{key}")
    value = d[key]
    if isinstance(value, bool) and typ in (int, float, (int, float)):
        raise ManifestError(f"manifest: field {where}.{key} must be {typ}, got bool")
    if not isinstance(value, typ):
        raise ManifestError(f"manifest: field {where}.{key} has type {type(value).__name__}")
    return value


def _opt_bool(d: dict[str, Any], key: str, where: str) -> bool:
    """An optional boolean member, false when absent (manifests written before it existed)."""
    value = d.get(key, False)
    if not isinstance(value, bool):
        raise ManifestError(f"manifest: field {where}.{key} must be a boolean")
    return value


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"manifest: {where} must be an object")
    return value


def valid_member_name(name: str) -> bool:
    """Archive member names are single, plain path components (no directories, no dot-files)."""
    # fullmatch, not match: "$" also matches before a trailing newline.
    return bool(_MEMBER_RE.fullmatch(name)) and name not in {".", ".."}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TensorSpec:
        d = _obj(d, where)
        shape = _req(d, "shape", list, where)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise ManifestError(f"manifest: {where}.shape must be a list of non-negative ints")
        dtype = _req(d, "dtype", str, where)
        if dtype not in _DTYPES:
            raise ManifestError(f"manifest: {where}.dtype {dtype!r} is not supported")
        return cls(name=_req(d, "name", str, where), shape=tuple(shape), dtype=dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str

    @classmethod
    def from_dict(cls, d: Any, where: str) -> FileEntry:
        d = _obj(d, where)
        path = _req(d, "path", str, where)
        if not valid_member_name(path):
            raise ManifestError(f"manifest: {where}.path {path!r} is not a plain member name")
        size = _req(d, "size", int, where)
        sha = _req(d, "sha256", str, where)
        if size < 0 or not _SHA256_RE.fullmatch(sha):
            raise ManifestError(f"manifest: {where} has an invalid size or sha256")
        return cls(path=path, size=size, sha256=sha)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    source_sha256: str
    source_size: int

    @classmethod
    def from_dict(cls, d: Any) -> ModelInfo:
        d = _obj(d, "model")
        return cls(
            name=_req(d, "name", str, "model"),
            version=_req(d, "version", str, "model"),
            source_sha256=_req(d, "source_sha256", str, "model"),
            source_size=_req(d, "source_size", int, "model"),
        )


@dataclass(frozen=True)
class ProfileInfo:
    """What the artifact was built for. ``arch`` is the machine as ``platform.machine()`` names
    it on the device (x86_64, aarch64, armv7l); ``device`` is ``cpu`` or ``cuda``."""

    name: str
    arch: str
    device: str
    target: dict[str, Any]
    cuda_arch: str | None = None

    @classmethod
    def from_dict(cls, d: Any) -> ProfileInfo:
        d = _obj(d, "profile")
        device = _req(d, "device", str, "profile")
        if device not in ("cpu", "cuda"):
            raise ManifestError(f"manifest: profile.device {device!r} must be 'cpu' or 'cuda'")
        cuda_arch = d.get("cuda_arch")
        if cuda_arch is not None and not isinstance(cuda_arch, str):
            raise ManifestError("manifest: profile.cuda_arch must be a string")
        return cls(
            name=_req(d, "name", str, "profile"),
            arch=_req(d, "arch", str, "profile"),
            device=device,
            target=_obj(_req(d, "target", dict, "profile"), "profile.target"),
            cuda_arch=cuda_arch,
        )


@dataclass(frozen=True)
class Verification:
    """How the compiler checked the artifact's numerics before signing it.

    ``method`` is ``native`` (ran on the build machine), ``qemu-user`` (ran under emulation) or
    ``none`` (could not be run there; ``reason`` says why). Errors are against onnxruntime.

    ``within_reference_noise`` marks an artifact accepted although ``max_rel_error`` exceeds
    ``tolerance``: the model is ill-conditioned on the verification inputs (onnxruntime's own
    outputs move beyond the tolerance when those inputs are nudged by one ulp) and the artifact's
    errors are no worse than onnxruntime's own; ``reference_noise`` holds those numbers
    (FORMAT.md §3.5). Always false, with ``reference_noise`` null, for a plain pass."""

    verified: bool
    method: str
    reason: str | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    tolerance: float | None = None
    within_reference_noise: bool = False
    reference_noise: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: Any) -> Verification:
        d = _obj(d, "verification")
        method = _req(d, "method", str, "verification")
        if method not in ("native", "qemu-user", "none"):
            raise ManifestError(f"manifest: verification.method {method!r} is unknown")
        return cls(
            verified=_req(d, "verified", bool, "verification"),
            method=method,
            reason=d.get("reason"),
            max_abs_error=d.get("max_abs_error"),
            max_rel_error=d.get("max_rel_error"),
            tolerance=d.get("tolerance"),
            within_reference_noise=_opt_bool(d, "within_reference_noise", "verification"),
            reference_noise=d.get("reference_noise"),
        )


@dataclass(frozen=True)
class Manifest:
    model: ModelInfo
    profile: ProfileInfo
    abi: dict[str, str]
    library: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    files: tuple[FileEntry, ...]
    verification: Verification
    compile: dict[str, Any] = field(default_factory=dict)
    entry: str = "main"
    format: str = FORMAT_NAME
    format_version: int = FORMAT_VERSION

    _KEYS = frozenset(
        {"format", "format_version", "model", "profile", "abi", "library", "entry", "inputs",
         "outputs", "files", "verification", "compile"}
    )

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            raw = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ManifestError(f"manifest is not valid UTF-8 JSON: {e}") from e
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> Manifest:
        d = _obj(raw, "manifest")
        if d.get("format") != FORMAT_NAME:
            raise ManifestError(f"not an edgeforge manifest (format={d.get('format')!r})")
        version = d.get("format_version")
        # type() rather than ==: JSON true and 1.0 compare equal to 1 in Python.
        if type(version) is not int or version != FORMAT_VERSION:
            raise ManifestError(
                f"manifest format version {version!r} is not supported by this runtime "
                f"(supports {FORMAT_VERSION}); upgrade edgeforge-runtime"
            )
        unknown = set(d) - cls._KEYS
        if unknown:
            raise ManifestError(f"manifest: unknown fields {sorted(unknown)}")
        abi = _obj(_req(d, "abi", dict, "manifest"), "abi")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in abi.items()):
            raise ManifestError("manifest: abi must map names to version strings")
        files = tuple(
            FileEntry.from_dict(f, f"files[{i}]")
            for i, f in enumerate(_req(d, "files", list, "manifest"))
        )
        names = [f.path for f in files]
        if len(set(names)) != len(names):
            raise ManifestError("manifest: duplicate file entries")
        library = _req(d, "library", str, "manifest")
        if library not in names:
            raise ManifestError(f"manifest: library {library!r} is not among the listed files")
        entry = d.get("entry", "main")
        if not isinstance(entry, str) or not entry:
            raise ManifestError("manifest: entry must be a non-empty string")
        return cls(
            format=FORMAT_NAME,
            format_version=FORMAT_VERSION,
            model=ModelInfo.from_dict(_req(d, "model", dict, "manifest")),
            profile=ProfileInfo.from_dict(_req(d, "profile", dict, "manifest")),
            abi=dict(abi),
            library=library,
            entry=entry,
            inputs=tuple(
                TensorSpec.from_dict(t, f"inputs[{i}]")
                for i, t in enumerate(_req(d, "inputs", list, "manifest"))
            ),
            outputs=tuple(
                TensorSpec.from_dict(t, f"outputs[{i}]")
                for i, t in enumerate(_req(d, "outputs", list, "manifest"))
            ),
            files=files,
            verification=Verification.from_dict(_req(d, "verification", dict, "manifest")),
            compile=_obj(d.get("compile", {}), "compile"),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        return d

    def to_json(self) -> bytes:
        """Canonical bytes: sorted keys, no insignificant whitespace, UTF-8. These bytes are signed."""
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode("utf-8")

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)
