"""Turn a built library into a signed artifact (format v1, defined by ``edgeforge_runtime``).

Reproducibility: for the same model, profile, options and schedules, every file digest in the
manifest is the same from build to build. The schedules are what ``compile.tuning.records`` lists:
records of the tuning database (reapplied as they are), timed samples (the timing on the build
machine decides, so a build on an empty database may pick others; they are stored in the database,
so the next build reapplies them) and untimed seeded samples (deterministic: cross targets). The
manifest's ``compile.timings`` (wall times) and the measured ``cost_us`` of new records are the
non-reproducible fields, and the ECDSA signature is randomised by design.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from edgeforge_runtime.archive import file_entry, write_artifact
from edgeforge_runtime.manifest import (
    RUNTIME_ABI,
    Manifest,
    ModelInfo,
    ProfileInfo,
    TensorSpec,
    Verification,
)
from edgeforge_runtime.signature import dump_signatures

from .profiles import Profile
from .signing import Signer
from .validation import TensorInfo

__all__ = ["artifact_name", "package"]

LIBRARY_NAME = "model.so"


def artifact_name(model_name: str, version: str, profile: str) -> str:
    return f"{model_name}-{version}-{profile}.efa"


def package(
    *,
    library: Path,
    dest: Path,
    model_name: str,
    model_version: str,
    source_sha256: str,
    source_size: int,
    profile: Profile,
    inputs: tuple[TensorInfo, ...],
    outputs: list[tuple[str, list[int], str]],
    verification: Verification,
    compile_info: dict[str, Any],
    signer: Signer,
) -> tuple[Path, Manifest]:
    manifest = Manifest(
        model=ModelInfo(name=model_name, version=model_version, source_sha256=source_sha256,
                        source_size=source_size),
        profile=ProfileInfo(name=profile.name, arch=profile.arch, device=profile.device,
                            target=profile.target, cuda_arch=profile.cuda_arch),
        abi=dict(RUNTIME_ABI),
        library=LIBRARY_NAME,
        inputs=tuple(TensorSpec(t.name, tuple(t.shape), t.dtype) for t in inputs),
        outputs=tuple(TensorSpec(n, tuple(s), d) for n, s, d in outputs),
        files=(file_entry(library, LIBRARY_NAME),),
        verification=verification,
        compile=compile_info,
    )
    mbytes = manifest.to_json()
    sig = dump_signatures([signer.sign(mbytes)])
    path = write_artifact(dest, mbytes, sig, {LIBRARY_NAME: library})
    return path, manifest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
