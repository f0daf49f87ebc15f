"""Errors raised by the edgeforge compiler library.

::

    EdgeforgeError
    ├── PermanentError                 retrying cannot help: report to the user, do not retry
    │   ├── ModelError                 the uploaded model cannot be compiled as it is
    │   │   ├── ModelTooLargeError     over the size limit
    │   │   ├── NotOnnxError           not an ONNX protobuf at all
    │   │   ├── CorruptModelError      an ONNX file, but truncated or damaged
    │   │   ├── InvalidModelError      parses, but fails the ONNX checker / has no graph
    │   │   ├── OpsetError             opset outside the supported range
    │   │   ├── ExternalDataError      tensors stored outside the file
    │   │   ├── DynamicShapeError      inputs with unknown dims and no shape in the spec
    │   │   └── UnsupportedOperatorError  operators the compiler cannot convert (all listed)
    │   ├── ProfileError               unknown profile, or an invalid profile file
    │   ├── SpecError                  an invalid compile spec (input shapes, options)
    │   ├── CompileError               TVM failed on this model/profile
    │   │   ├── CompileTimeoutError    over the wall-time bound
    │   │   └── CompileResourceError   over the memory bound, or the worker crashed
    │   ├── ToolchainError             a cross compiler / CUDA toolkit needed by the profile is missing
    │   └── VerificationError          the artifact's numerics disagree with onnxruntime
    └── TransientError                 try again later (storage throttling, timeouts)
"""

from __future__ import annotations

__all__ = [
    "CompileError",
    "CompileResourceError",
    "CompileTimeoutError",
    "CorruptModelError",
    "DynamicShapeError",
    "EdgeforgeError",
    "ExternalDataError",
    "InvalidModelError",
    "ModelError",
    "ModelTooLargeError",
    "NotOnnxError",
    "OpsetError",
    "PermanentError",
    "ProfileError",
    "SpecError",
    "ToolchainError",
    "TransientError",
    "UnsupportedOperatorError",
    "VerificationError",
]


class EdgeforgeError(Exception):
    """Root of every error raised by the compiler library."""

    #: A short, stable machine-readable code (reports, JSON output, metrics dimensions).
    code = "error"


class PermanentError(EdgeforgeError):
    """Retrying the same input cannot succeed."""

    code = "permanent"


class TransientError(EdgeforgeError):
    """A passing failure (throttling, network); retrying may succeed."""

    code = "transient"


class ModelError(PermanentError):
    code = "invalid_model"


class ModelTooLargeError(ModelError):
    code = "model_too_large"


class NotOnnxError(ModelError):
    code = "not_onnx"


class CorruptModelError(ModelError):
    code = "corrupt_model"


class InvalidModelError(ModelError):
    code = "invalid_model"


class OpsetError(ModelError):
    code = "unsupported_opset"


class ExternalDataError(ModelError):
    code = "external_data"


class DynamicShapeError(ModelError):
    code = "dynamic_shape"

    def __init__(self, message: str, inputs: dict[str, list[int | str | None]]) -> None:
        super().__init__(message)
        self.inputs = inputs


class UnsupportedOperatorError(ModelError):
    code = "unsupported_operator"

    def __init__(self, message: str, nodes: list[tuple[str, str, str]]) -> None:
        super().__init__(message)
        #: (op domain::type, node name, reason) for every node that cannot be converted.
        self.nodes = nodes


class ProfileError(PermanentError):
    code = "profile"


class SpecError(PermanentError):
    code = "spec"


class CompileError(PermanentError):
    code = "compile_failed"


class CompileTimeoutError(CompileError):
    code = "compile_timeout"


class CompileResourceError(CompileError):
    code = "compile_resources"


class ToolchainError(PermanentError):
    code = "toolchain_missing"


class VerificationError(PermanentError):
    code = "verification_failed"
