"""edgeforge compiler: ONNX → signed, device-ready TVM artifacts for named target profiles.

The library knows nothing about AWS Lambda; ``functions/`` wraps it in thin handlers and
``compiler.cli`` in the ``edgeforge`` command.
"""

from __future__ import annotations

from .exceptions import EdgeforgeError, PermanentError, TransientError
from .pipeline import CompileReport, ProfileResult, compile_model
from .profiles import Profile, ProfileRegistry, load_profiles
from .signing import LocalKeySigner, Signer, generate_key
from .spec import CompileOptions, CompileSpec, parse_input_shape
from .validation import ValidatedModel, validate_model
from .worker import CompileWorker

__version__ = "0.1.0"

__all__ = [
    "CompileOptions",
    "CompileReport",
    "CompileSpec",
    "CompileWorker",
    "EdgeforgeError",
    "LocalKeySigner",
    "PermanentError",
    "Profile",
    "ProfileRegistry",
    "ProfileResult",
    "Signer",
    "TransientError",
    "ValidatedModel",
    "compile_model",
    "generate_key",
    "load_profiles",
    "parse_input_shape",
    "validate_model",
]
