"""The compile spec: what to compile, for which profiles, with which options."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .exceptions import SpecError

__all__ = ["CompileOptions", "CompileSpec", "parse_constant_input", "parse_input_shape"]

_MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class CompileOptions(BaseModel):
    """Options that change what is built (recorded in the manifest) or bound the build."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Optimisation level passed to TVM's pipeline ("default" = edgeforge's fast CPU recipe).
    opt_level: int = Field(default=3, ge=0, le=3)
    #: MetaSchedule tuning trials per model (0 = no tuning: the fast default schedules).
    tune_trials: int = Field(default=0, ge=0, le=100_000)
    #: Run the artifact against onnxruntime where the build machine can execute it.
    verify: bool = True
    #: Maximum allowed |a-b| / (|b| + 1) between the artifact and onnxruntime.
    tolerance: float = Field(default=1e-3, gt=0)
    #: Seed of the random verification inputs (recorded; makes verification repeatable).
    seed: int = 0
    #: Tuning database directory (MetaSchedule JSONDatabase per target): schedules timed or
    #: tuned by earlier builds, of any model, are reused; new results are added. None = the
    #: default, ``$EDGEFORGE_TUNING_DB`` or ``~/.cache/edgeforge/tuning-db``.
    tuning_db: str | None = None
    #: Seconds a CPU build may spend sampling and timing schedules on this machine (None: 240,
    #: or ``$EDGEFORGE_SCHEDULE_BUDGET_S``). More finds faster code; the search also stops once
    #: further samples stop paying off.
    schedule_budget_s: float | None = Field(default=None, ge=0, le=3600)


class CompileSpec(BaseModel):
    """A request to compile one model. ``input_shapes`` fixes dynamic input dimensions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_name: str = Field(pattern=_MODEL_NAME)
    model_version: str = Field(default="1", pattern=r"^[0-9A-Za-z._-]{1,64}$")
    profiles: list[str] = Field(min_length=1)
    input_shapes: dict[str, list[int]] = Field(default_factory=dict)
    #: Inputs the device never changes (a sample rate, a shape, axes): frozen into the model so
    #: the pre-passes can fold what depends on them (e.g. ``If`` on the sample rate).
    constant_inputs: dict[str, float | int | list[float] | list[int]] = Field(default_factory=dict)
    options: CompileOptions = CompileOptions()

    @field_validator("input_shapes")
    @classmethod
    def _positive(cls, v: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, shape in v.items():
            if not shape or any(d <= 0 for d in shape):
                raise ValueError(f"input shape for {name!r} must be positive dims, got {shape}")
        return v


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """Parse ``name=1,3,224,224`` (also ``name:1x3x224x224``)."""
    m = re.match(r"^\s*([^=:\s]+)\s*[=:]\s*([0-9][0-9,x\s]*)$", text)
    if not m:
        raise SpecError(
            f"invalid input shape {text!r}: expected NAME=D1,D2,... e.g. input=1,3,224,224"
        )
    dims = [d for d in re.split(r"[,x\s]+", m.group(2).strip()) if d]
    shape = [int(d) for d in dims]
    if not shape or any(d <= 0 for d in shape):
        raise SpecError(f"invalid input shape {text!r}: dimensions must be positive integers")
    return m.group(1), shape


def parse_constant_input(text: str) -> tuple[str, float | int | list[float] | list[int]]:
    """Parse ``name=16000`` or ``name=1,2,3`` (numbers; reshaped to the input's shape)."""
    m = re.match(r"^\s*([^=\s]+)\s*=\s*(.+)$", text)
    if not m:
        raise SpecError(f"invalid constant input {text!r}: expected NAME=VALUE[,VALUE...]")
    try:
        values = [float(v) if any(c in v for c in ".eE") else int(v)
                  for v in m.group(2).replace(" ", "").split(",") if v]
    except ValueError as e:
        raise SpecError(f"invalid constant input {text!r}: values must be numbers") from e
    if not values:
        raise SpecError(f"invalid constant input {text!r}: no value")
    return m.group(1), values[0] if len(values) == 1 else values  # type: ignore[return-value]
