"""Compile one model for several profiles: validate once, build each profile in the worker,
verify, package, sign. One profile failing never stops the others."""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from onnx import numpy_helper
from pydantic import BaseModel, ConfigDict

from edgeforge_runtime.dtypes import storage_dtype

from ._build import BuildRequest
from .exceptions import EdgeforgeError, TransientError
from .packaging import artifact_name, package, sha256_file
from .prepasses import FoldStats, fold_constants
from .profiles import Profile, ProfileRegistry, load_profiles
from .signing import Signer
from .spec import CompileSpec
from .toolchain import require_cc
from .validation import DEFAULT_MAX_MODEL_BYTES, ValidatedModel, validate_model
from .verify import verify_library
from .worker import CompileWorker

logger = logging.getLogger(__name__)

__all__ = ["CompileReport", "ProfileResult", "compile_model", "tuning_db"]


def tuning_db(configured: str | None = None) -> Path:
    """The tuning database directory: the spec's, ``$EDGEFORGE_TUNING_DB``, or the user cache."""
    import os

    if configured:
        return Path(configured)
    env = os.environ.get("EDGEFORGE_TUNING_DB")
    return Path(env) if env else Path.home() / ".cache" / "edgeforge" / "tuning-db"


def _schedule_options(spec: CompileSpec) -> dict[str, Any] | None:
    """Overrides of compiler.optimize.DEFAULT_OPTIONS from the spec (or the environment)."""
    import os

    budget = spec.options.schedule_budget_s
    if budget is None and os.environ.get("EDGEFORGE_SCHEDULE_BUDGET_S"):
        budget = float(os.environ["EDGEFORGE_SCHEDULE_BUDGET_S"])
    return {"budget_s": budget} if budget is not None else None


def _tuning_info(spec: CompileSpec, schedule: dict[str, Any]) -> dict[str, Any]:
    """The manifest's record of how the code was scheduled: the options, and per scheduled
    function its workload, the schedule's source (database record, timed sample, untimed sample)
    and digest. ``records_digest`` names the whole set: two artifacts of one model and profile
    with the same digest were built from the same schedules."""
    import hashlib
    import json

    records = list(schedule.get("schedules", []))
    digest_src = json.dumps(sorted((r["workload"], r.get("schedule", "")) for r in records))
    return {"trials": spec.options.tune_trials,
            "database": tuning_db(spec.options.tuning_db).name,
            "schedule_options": schedule.get("options"),
            "records": records,
            "records_digest": hashlib.sha256(digest_src.encode()).hexdigest()[:16]}

#: progress(profile, stage) with stage in validate/import/compile/export/verify/sign/done/failed
Progress = Callable[[str, str], None]


class ProfileResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    profile: str
    status: Literal["ok", "failed"]
    artifact: str | None = None
    sha256: str | None = None
    size: int | None = None
    verified: bool = False
    verification: dict[str, object] | None = None
    timings: dict[str, float] = {}
    error_code: str | None = None
    error: str | None = None


class CompileReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_name: str
    model_version: str
    source_sha256: str
    results: list[ProfileResult]

    @property
    def ok(self) -> bool:
        return all(r.status == "ok" for r in self.results)


def compile_model(
    data: bytes,
    spec: CompileSpec,
    signer: Signer,
    out_dir: Path,
    *,
    registry: ProfileRegistry | None = None,
    worker: CompileWorker | None = None,
    progress: Progress | None = None,
    max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
) -> CompileReport:
    """Validate ``data`` (raises a :class:`~compiler.exceptions.ModelError` for a bad model),
    then build, verify, package and sign one artifact per profile into ``out_dir``."""
    registry = registry or load_profiles()
    profiles = [registry.get(name) for name in spec.profiles]  # unknown names fail first
    say = progress or (lambda profile, stage: None)
    validated = validate_model(data, spec.input_shapes, max_bytes=max_model_bytes,
                               constant_inputs=dict(spec.constant_inputs))
    folded_model, stats = fold_constants(validated.model)
    folded = (folded_model.SerializeToString(), stats)
    own_worker = worker is None
    worker = worker or CompileWorker()
    results = []
    try:
        for profile in profiles:
            results.append(_one(validated, folded, data, spec, profile, signer, out_dir, worker,
                                say))
    finally:
        if own_worker:
            worker.close()
    return CompileReport(model_name=spec.model_name, model_version=spec.model_version,
                         source_sha256=validated.sha256, results=results)


def _one(validated: ValidatedModel, folded: tuple[bytes, FoldStats], source: bytes,
         spec: CompileSpec,
         profile: Profile, signer: Signer, out_dir: Path, worker: CompileWorker,
         say: Progress) -> ProfileResult:
    timings: dict[str, float] = {}
    build_bytes, stats = folded
    try:
        cc = require_cc(profile)
        with tempfile.TemporaryDirectory(prefix="edgeforge-build-") as tmp:
            request = BuildRequest(
                model_bytes=build_bytes, target=profile.target, cc=cc,
                out_path=str(Path(tmp) / "model.so"), cuda_arch=profile.cuda_arch,
                opt_level=spec.options.opt_level, tune_trials=spec.options.tune_trials,
                database_dir=str(tuning_db(spec.options.tuning_db)),
                optimize=_schedule_options(spec),
            )
            t0 = time.perf_counter()
            built = worker.build(request, progress=lambda stage: say(profile.name, stage))
            timings.update(built.timings)
            timings["build_total_s"] = time.perf_counter() - t0
            library = Path(built.library)

            t1 = time.perf_counter()
            if spec.options.verify:
                say(profile.name, "verify")
                frozen = {t.name: numpy_helper.to_array(t) for t in validated.model.graph.initializer
                          if t.name in spec.constant_inputs}
                verification = verify_library(library, profile, source, validated.inputs,
                                              spec.options.seed, spec.options.tolerance, frozen)
            else:
                from edgeforge_runtime.manifest import Verification

                verification = Verification(verified=False, method="none",
                                            reason="verification was disabled (--no-verify)")
            timings["verify_s"] = time.perf_counter() - t1

            say(profile.name, "sign")
            t2 = time.perf_counter()
            # The library returns low-bit tensors in their storage dtype; the manifest records
            # the logical one (edgeforge_runtime.dtypes).
            outputs = [(o.name, s, o.dtype if storage_dtype(o.dtype) == d != o.dtype else d)
                       for o, (s, d) in zip(validated.outputs, built.outputs)]
            dest = out_dir / artifact_name(spec.model_name, spec.model_version, profile.name)
            compile_info = {
                "options": spec.options.model_dump(),
                "input_shapes": spec.input_shapes,
                "constant_inputs": spec.constant_inputs,
                "tuning": _tuning_info(spec, built.schedule),
                "profile_revision": profile.revision,
                "kernels": built.kernels,
                "notes": [*validated.notes, *built.notes],
                "prepasses": {"folded_nodes": stats.folded_nodes, "inlined_ifs": stats.inlined_ifs},
                "timings": {k: round(v, 3) for k, v in timings.items()},
            }
            path, _ = package(
                library=library, dest=dest, model_name=spec.model_name,
                model_version=spec.model_version, source_sha256=validated.sha256,
                source_size=validated.size, profile=profile, inputs=validated.inputs,
                outputs=outputs, verification=verification, compile_info=compile_info,
                signer=signer,
            )
            timings["package_s"] = time.perf_counter() - t2
        say(profile.name, "done")
        return ProfileResult(
            profile=profile.name, status="ok", artifact=str(path), sha256=sha256_file(path),
            size=path.stat().st_size, verified=verification.verified,
            verification=verification.__dict__, timings={k: round(v, 3) for k, v in timings.items()},
        )
    except TransientError:
        raise  # throttling, timeouts: the caller retries (SQS redelivers)
    except EdgeforgeError as e:
        say(profile.name, "failed")
        logger.info("profile %s failed: %s", profile.name, e)
        return ProfileResult(profile=profile.name, status="failed", error_code=e.code,
                             error=str(e), timings={k: round(v, 3) for k, v in timings.items()})
