"""Errors raised by the device runtime.

::

    EdgeforgeRuntimeError
    ├── ArtifactError              the artifact must not be used (permanent)
    │   ├── ArchiveError           not a well-formed, safe artifact archive
    │   ├── ManifestError          the signed manifest is malformed or of another format version
    │   ├── SignatureError         no valid signature over the manifest
    │   │   └── UntrustedKeyError  validly signed, but by no key the caller trusts
    │   ├── DigestMismatchError    a member's size or sha256 differs from the signed manifest
    │   ├── ProfileMismatchError   built for another profile, architecture or device
    │   ├── AbiMismatchError       built for another runtime ABI (TVM / tvm-ffi versions)
    │   └── RollbackError          older than a version this device already trusts
    ├── RuntimeLoadError           the runtime libraries or a device backend cannot be loaded
    │   ├── DeviceUnavailableError the requested device (e.g. CUDA) is not usable here
    │   └── MissingDependencyError an optional dependency the artifact needs is not installed
    └── RepositoryError            the artifact repository cannot be reached or answered badly
"""

from __future__ import annotations

__all__ = [
    "AbiMismatchError",
    "ArchiveError",
    "ArtifactError",
    "DeviceUnavailableError",
    "DigestMismatchError",
    "EdgeforgeRuntimeError",
    "ManifestError",
    "MissingDependencyError",
    "ProfileMismatchError",
    "RepositoryError",
    "RollbackError",
    "RuntimeLoadError",
    "SignatureError",
    "UntrustedKeyError",
]


class EdgeforgeRuntimeError(Exception):
    """Root of every error raised by ``edgeforge_runtime``."""


class ArtifactError(EdgeforgeRuntimeError):
    """The artifact failed a check and must not be loaded."""


class ArchiveError(ArtifactError):
    """The file is not a well-formed, safe artifact archive."""


class ManifestError(ArtifactError):
    """The manifest is malformed or has an unsupported format version."""


class SignatureError(ArtifactError):
    """The manifest carries no valid signature."""


class UntrustedKeyError(SignatureError):
    """The manifest is signed, but by none of the trusted keys."""


class DigestMismatchError(ArtifactError):
    """A member of the archive does not match the size or sha256 in the signed manifest."""


class ProfileMismatchError(ArtifactError):
    """The artifact was built for another target profile, architecture or device."""


class AbiMismatchError(ArtifactError):
    """The artifact needs another runtime ABI than this runtime provides."""


class RollbackError(ArtifactError):
    """The artifact is older than a version this device has already trusted."""


class RuntimeLoadError(EdgeforgeRuntimeError):
    """The TVM runtime library or a device backend could not be loaded."""


class DeviceUnavailableError(RuntimeLoadError):
    """The requested device is not available on this machine (e.g. no CUDA driver)."""


class MissingDependencyError(RuntimeLoadError):
    """The artifact needs an optional dependency that is not installed (e.g. ml_dtypes for
    float8/int4/bfloat16 tensors: ``pip install 'edgeforge-runtime[lowbit]'``)."""


class RepositoryError(EdgeforgeRuntimeError):
    """The artifact repository could not be reached or returned something unusable."""
