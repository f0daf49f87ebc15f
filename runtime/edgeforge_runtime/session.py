"""``InferenceSession``: the onnxruntime-shaped façade over a verified artifact."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._vm import VirtualMachine, set_num_threads, to_numpy
from .archive import Limits, VerifiedArtifact, open_artifact
from .compat import check_compatible
from .dtypes import from_storage, ml_dtypes_module, needs_ml_dtypes, to_storage
from .manifest import Manifest, TensorSpec
from .signature import TrustedKeys

__all__ = ["InferenceSession", "NodeArg", "SessionOptions"]

_ORT_TYPES = {
    "float32": "tensor(float)", "float16": "tensor(float16)", "float64": "tensor(double)",
    "bfloat16": "tensor(bfloat16)", "int8": "tensor(int8)", "int16": "tensor(int16)",
    "int32": "tensor(int32)", "int64": "tensor(int64)", "uint8": "tensor(uint8)",
    "uint16": "tensor(uint16)", "uint32": "tensor(uint32)", "uint64": "tensor(uint64)",
    "bool": "tensor(bool)",
    "float8_e4m3fn": "tensor(float8e4m3fn)", "float8_e4m3fnuz": "tensor(float8e4m3fnuz)",
    "float8_e5m2": "tensor(float8e5m2)", "float8_e5m2fnuz": "tensor(float8e5m2fnuz)",
    "float8_e8m0fnu": "tensor(float8e8m0)", "float4_e2m1fn": "tensor(float4e2m1)",
    "int4": "tensor(int4)", "uint4": "tensor(uint4)", "int2": "tensor(int2)",
    "uint2": "tensor(uint2)",
}


@dataclass(frozen=True)
class NodeArg:
    """An input or output, as onnxruntime's ``NodeArg``: ``name``, ``shape``, ``type``."""

    name: str
    shape: list[int]
    type: str
    dtype: str


@dataclass
class SessionOptions:
    """``intra_op_num_threads``: CPU threads for one inference (0 = TVM's default, one per
    physical core). Applies process-wide, as TVM has one thread pool per process."""

    intra_op_num_threads: int = 0
    extract_dir: str | None = None
    limits: Limits = Limits()


def _node(t: TensorSpec) -> NodeArg:
    return NodeArg(name=t.name, shape=list(t.shape), type=_ORT_TYPES[t.dtype], dtype=t.dtype)


class InferenceSession:
    """Verify an artifact, load it, and run it.

    ``trusted_keys``: PEM files, PEM strings or DER bytes of the public keys allowed to sign
    artifacts (or a ready :class:`TrustedKeys`). ``providers``: ``["CPUExecutionProvider"]``
    (default) or ``["CUDAExecutionProvider"]``; there is no silent fallback between them.
    ``expected_profile``: refuse artifacts built for another profile.
    """

    def __init__(
        self,
        artifact: str | os.PathLike[str],
        trusted_keys: TrustedKeys | Iterable[str | os.PathLike[str] | bytes],
        sess_options: SessionOptions | None = None,
        providers: Sequence[str] | None = None,
        expected_profile: str | None = None,
    ) -> None:
        self._options = sess_options or SessionOptions()
        trusted = (trusted_keys if isinstance(trusted_keys, TrustedKeys)
                   else TrustedKeys.load(trusted_keys))
        verified: VerifiedArtifact = open_artifact(
            artifact, trusted, extract_to=self._options.extract_dir, limits=self._options.limits
        )
        try:
            manifest = verified.manifest
            check_compatible(manifest, expected_profile=expected_profile)
            special = needs_ml_dtypes(t.dtype for t in (*manifest.inputs, *manifest.outputs))
            if special:
                ml_dtypes_module(f"the model has {', '.join(special)} inputs or outputs")
            device = self._device_for(manifest, providers)
            if self._options.intra_op_num_threads:
                set_num_threads(self._options.intra_op_num_threads)
            self._vm = VirtualMachine(verified.library_path, device=device)
        finally:
            # dlopen keeps its own mapping: the extracted copy is not needed once loaded.
            verified.cleanup()
        self._manifest = manifest
        self.signed_by = verified.signed_by
        self._inputs = [_node(t) for t in manifest.inputs]
        self._outputs = [_node(t) for t in manifest.outputs]
        self._providers = ["CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"]

    @staticmethod
    def _device_for(manifest: Manifest, providers: Sequence[str] | None) -> str:
        wanted = list(providers or [])
        if not wanted:
            return manifest.profile.device
        allowed = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}
        unknown = [p for p in wanted if p not in allowed]
        if unknown:
            raise ValueError(f"unknown providers {unknown}; use {sorted(allowed)}")
        if allowed[wanted[0]] != manifest.profile.device:
            raise ValueError(
                f"the artifact was compiled for device {manifest.profile.device!r} and cannot run "
                f"on {wanted[0]}; pull the artifact of a {wanted[0][:-17].lower()} profile instead"
            )
        return manifest.profile.device

    @property
    def manifest(self) -> Manifest:
        return self._manifest

    def get_inputs(self) -> list[NodeArg]:
        return list(self._inputs)

    def get_outputs(self) -> list[NodeArg]:
        return list(self._outputs)

    def get_providers(self) -> list[str]:
        return list(self._providers)

    def get_modelmeta(self) -> dict[str, Any]:
        m = self._manifest
        return {"name": m.model.name, "version": m.model.version, "profile": m.profile.name,
                "source_sha256": m.model.source_sha256}

    def _check_feed(self, input_feed: Mapping[str, Any]) -> list[Any]:
        import numpy as np

        if not isinstance(input_feed, Mapping):
            raise ValueError("input_feed must be a dict of input name -> array")
        expected = {i.name for i in self._inputs}
        missing = [n for n in expected if n not in input_feed]
        unknown = [n for n in input_feed if n not in expected]
        if missing or unknown:
            raise ValueError(
                f"wrong inputs: missing {sorted(missing)}, unexpected {sorted(unknown)}; "
                f"the model takes {[i.name for i in self._inputs]}"
            )
        arrays = []
        for spec in self._inputs:
            value = input_feed[spec.name]
            arr = value if isinstance(value, np.ndarray) else np.asarray(value)
            if str(arr.dtype) != spec.dtype:
                raise ValueError(
                    f"input {spec.name!r} has dtype {arr.dtype}, expected {spec.dtype}"
                )
            if list(arr.shape) != spec.shape:
                raise ValueError(
                    f"input {spec.name!r} has shape {list(arr.shape)}, expected {spec.shape}"
                )
            arrays.append(to_storage(np.ascontiguousarray(arr), spec.dtype))
        return arrays

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
            run_options: Any = None) -> list[Any]:
        """Run the model. ``output_names=None`` returns every output, in manifest order."""

        arrays = self._check_feed(input_feed)
        results = self._vm.run(arrays)
        if len(results) != len(self._outputs):
            raise RuntimeError(
                f"the model returned {len(results)} outputs but its manifest lists "
                f"{len(self._outputs)}"
            )
        by_name = {spec.name: from_storage(to_numpy(r), spec.dtype)
                   for spec, r in zip(self._outputs, results)}
        if output_names is None:
            return [by_name[o.name] for o in self._outputs]
        unknown = [n for n in output_names if n not in by_name]
        if unknown:
            raise ValueError(f"unknown outputs {unknown}; the model has {list(by_name)}")
        return [by_name[n] for n in output_names]

