"""Signed repository index: which artifact is current for a (model, profile).

``<base>/<model>/<profile>/index.json`` is a signed envelope, in the style of TUF metadata::

    {"signed": {"format": "edgeforge-index", "format_version": 1, "model": "resnet",
                "profile": "rpi4", "version": 3, "model_version": "3",
                "artifact": {"path": "resnet/3/rpi4.efa", "size": 123, "sha256": "…"},
                "published": "2026-11-24T12:00:00Z", "expires": "2027-11-24T12:00:00Z"},
     "signatures": [{"keyid": "…", "alg": "ecdsa-p256-sha256", "sig": "…"}]}

The signatures cover the canonical JSON of ``signed`` (sorted keys, compact, UTF-8). ``version``
only ever increases (rollback protection), ``expires`` bounds how long a stale index is accepted
(freeze protection), and the artifact's size and sha256 are checked before it is written to the
device cache.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .exceptions import ManifestError, RepositoryError, RollbackError
from .signature import Signature, TrustedKeys, load_signatures

__all__ = ["INDEX_FORMAT", "ArtifactRef", "Index", "canonical", "index_path", "parse_index"]

INDEX_FORMAT = "edgeforge-index"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_PATH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,299}$")


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def index_path(model: str, profile: str) -> str:
    if not (_NAME.match(model) and _NAME.match(profile)):
        raise ValueError(f"invalid model or profile name: {model!r}, {profile!r}")
    return f"{model}/{profile}/index.json"


def _parse_time(value: Any, field: str) -> datetime:
    if not isinstance(value, str):
        raise ManifestError(f"index: {field} must be an ISO-8601 string")
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as e:
        raise ManifestError(f"index: {field} {value!r} is not ISO-8601") from e
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class ArtifactRef:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Index:
    model: str
    profile: str
    version: int
    model_version: str
    artifact: ArtifactRef
    published: str
    expires: str

    def signed_dict(self) -> dict[str, Any]:
        return {
            "format": INDEX_FORMAT, "format_version": 1, "model": self.model,
            "profile": self.profile, "version": self.version, "model_version": self.model_version,
            "artifact": {"path": self.artifact.path, "size": self.artifact.size,
                         "sha256": self.artifact.sha256},
            "published": self.published, "expires": self.expires,
        }

    def envelope(self, signatures: list[Signature]) -> bytes:
        import base64

        return canonical({
            "signed": self.signed_dict(),
            "signatures": [{"keyid": s.keyid, "alg": s.alg,
                            "sig": base64.b64encode(s.sig).decode("ascii")} for s in signatures],
        })


def parse_index(data: bytes, trusted: TrustedKeys, model: str, profile: str,
                now: datetime | None = None, min_version: int = 0) -> Index:
    """Verify and parse an index envelope for (``model``, ``profile``)."""
    try:
        raw = json.loads(data.decode("utf-8"))
        signed = raw["signed"]
        sig_bytes = canonical({"signatures": raw["signatures"]})
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise RepositoryError(f"the repository index for {model}/{profile} is malformed: {e}") from e
    trusted.verify(canonical(signed), load_signatures(sig_bytes))
    if not isinstance(signed, dict) or signed.get("format") != INDEX_FORMAT or signed.get(
            "format_version") != 1:
        raise ManifestError("not an edgeforge index of format version 1")
    if signed.get("model") != model or signed.get("profile") != profile:
        raise RepositoryError(
            f"the index is for {signed.get('model')}/{signed.get('profile')}, not {model}/{profile}")
    version = signed.get("version")
    art = signed.get("artifact") or {}
    if (not isinstance(version, int) or isinstance(version, bool) or version < 1
            or not isinstance(art.get("size"), int) or not isinstance(art.get("sha256"), str)
            or not isinstance(art.get("path"), str) or not _PATH.match(art["path"])
            or ".." in art["path"].split("/")):
        raise ManifestError("index: invalid version or artifact reference")
    expires = _parse_time(signed.get("expires"), "expires")
    if expires <= (now or datetime.now(timezone.utc)):
        raise RepositoryError(
            f"the repository index for {model}/{profile} expired at {signed['expires']}: the "
            "repository may be frozen or replayed; refusing it")
    if version < min_version:
        raise RollbackError(
            f"the repository offers version {version} of {model}/{profile}, older than version "
            f"{min_version} this device already trusts (rollback refused)")
    _parse_time(signed.get("published"), "published")
    return Index(model=model, profile=profile, version=version,
                 model_version=str(signed.get("model_version", version)),
                 artifact=ArtifactRef(path=art["path"], size=art["size"], sha256=art["sha256"]),
                 published=signed["published"], expires=signed["expires"])
