"""edgeforge-runtime: verify and run edgeforge artifacts on a device.

No compiler, no AWS SDK: apache-tvm-ffi plus the platform's ``libtvm_runtime.so``.

>>> from edgeforge_runtime import InferenceSession
>>> sess = InferenceSession("resnet-3-rpi4.efa", trusted_keys=["pubkey.pem"])
>>> [y] = sess.run(None, {"input": x})
"""

from __future__ import annotations

from .archive import Limits, VerifiedArtifact, open_artifact, read_manifest
from .compat import check_compatible, host_arch
from .exceptions import (
    AbiMismatchError,
    ArchiveError,
    ArtifactError,
    DeviceUnavailableError,
    DigestMismatchError,
    EdgeforgeRuntimeError,
    ManifestError,
    MissingDependencyError,
    ProfileMismatchError,
    RepositoryError,
    RollbackError,
    RuntimeLoadError,
    SignatureError,
    UntrustedKeyError,
)
from .manifest import FORMAT_VERSION, RUNTIME_ABI, Manifest
from .session import InferenceSession, NodeArg, SessionOptions
from .signature import TrustedKeys

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "RUNTIME_ABI",
    "AbiMismatchError",
    "ArchiveError",
    "ArtifactError",
    "DeviceUnavailableError",
    "DigestMismatchError",
    "EdgeforgeRuntimeError",
    "InferenceSession",
    "Limits",
    "Manifest",
    "ManifestError",
    "MissingDependencyError",
    "NodeArg",
    "ProfileMismatchError",
    "RepositoryError",
    "RollbackError",
    "RuntimeLoadError",
    "SessionOptions",
    "SignatureError",
    "TrustedKeys",
    "UntrustedKeyError",
    "VerifiedArtifact",
    "check_compatible",
    "host_arch",
    "open_artifact",
    "read_manifest",
]
