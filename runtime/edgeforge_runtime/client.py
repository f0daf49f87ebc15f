"""Pull artifacts from a repository onto the device, verify them, cache them, work offline.

>>> client = RepositoryClient("http://127.0.0.1:5000/artifacts", trusted_keys=["pub.pem"],
...                           profile="rpi4", cache_dir="~/.cache/edgeforge")
>>> path = client.update("resnet")          # verified artifact in the cache
>>> sess = client.session("resnet")         # or straight to an InferenceSession

Order of checks (python-tuf's: verify before writing): the index signature, its expiry, its
version against the highest version this device has trusted (rollback), then the artifact's
size (bounded download) and sha256, and only then the artifact is moved into the cache. When the
repository cannot be reached, the last verified artifact in the cache is used.
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .archive import open_artifact
from .exceptions import ArtifactError, DigestMismatchError, RepositoryError
from .repository import Index, index_path, parse_index
from .signature import TrustedKeys

logger = logging.getLogger(__name__)

__all__ = ["ClientConfig", "FetcherInterface", "RepositoryClient", "UrllibFetcher"]


class FetcherInterface(abc.ABC):
    """How bytes are fetched (swap it in tests for an in-memory repository)."""

    @abc.abstractmethod
    def fetch(self, url: str, max_bytes: int) -> bytes:
        """Return at most ``max_bytes`` from ``url`` or raise :class:`RepositoryError`."""


class UrllibFetcher(FetcherInterface):
    """http(s):// and file:// with the standard library; no AWS credentials involved."""

    def __init__(self, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s

    def fetch(self, url: str, max_bytes: int) -> bytes:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme not in ("http", "https", "file"):
            raise RepositoryError(f"unsupported URL scheme in {url!r}")
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:
                data: bytes = resp.read(max_bytes + 1)
        except (urllib.error.URLError, OSError) as e:
            raise RepositoryError(f"cannot fetch {url}: {e}") from e
        if len(data) > max_bytes:
            raise RepositoryError(f"{url} is larger than the allowed {max_bytes} bytes")
        return data


@dataclass(frozen=True)
class ClientConfig:
    max_index_bytes: int = 64 << 10
    max_artifact_bytes: int = 2 << 30


class RepositoryClient:
    def __init__(self, base_url: str, trusted_keys: TrustedKeys | list[Any], profile: str,
                 cache_dir: str | os.PathLike[str], fetcher: FetcherInterface | None = None,
                 config: ClientConfig | None = None) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self.trusted = (trusted_keys if isinstance(trusted_keys, TrustedKeys)
                        else TrustedKeys.load(trusted_keys))
        self.profile = profile
        self.cache_dir = Path(cache_dir).expanduser()
        self.fetcher = fetcher or UrllibFetcher()
        self.config = config or ClientConfig()

    def _dir(self, model: str) -> Path:
        index_path(model, self.profile)  # validates both names
        return self.cache_dir / model / self.profile

    def _state(self, model: str) -> dict[str, Any]:
        try:
            return dict(json.loads((self._dir(model) / "state.json").read_text()))
        except (OSError, ValueError):
            return {}

    def trusted_version(self, model: str) -> int:
        return int(self._state(model).get("version", 0))

    def cached(self, model: str) -> Path | None:
        state = self._state(model)
        path = self._dir(model) / str(state.get("artifact", ""))
        return path if state.get("artifact") and path.is_file() else None

    def _fetch_index(self, model: str) -> Index:
        url = urllib.parse.urljoin(self.base_url, index_path(model, self.profile))
        data = self.fetcher.fetch(url, self.config.max_index_bytes)
        return parse_index(data, self.trusted, model, self.profile,
                           min_version=self.trusted_version(model))

    def update(self, model: str, offline_ok: bool = True) -> Path:
        """Return the path of the newest verified artifact of ``model`` for this profile."""
        try:
            index = self._fetch_index(model)
        except RepositoryError as e:
            cached = self.cached(model)
            if offline_ok and cached is not None and "expired" not in str(e):
                logger.warning("repository unreachable (%s); using cached %s", e, cached.name)
                return cached
            raise
        directory = self._dir(model)
        name = f"{model}-{index.model_version}-{self.profile}.efa"
        target = directory / name
        state = self._state(model)
        if target.is_file() and state.get("sha256") == index.artifact.sha256:
            return target
        if index.artifact.size > self.config.max_artifact_bytes:
            raise RepositoryError(f"the artifact is {index.artifact.size} bytes, over the limit")
        url = urllib.parse.urljoin(self.base_url, index.artifact.path)
        data = self.fetcher.fetch(url, index.artifact.size)
        if len(data) != index.artifact.size or hashlib.sha256(
                data).hexdigest() != index.artifact.sha256:
            raise DigestMismatchError(
                f"the artifact downloaded from {url} does not match the signed index")
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        try:  # the artifact's own signature, digests and manifest must check out too
            verified = open_artifact(tmp, self.trusted)
            verified.cleanup()
            if verified.manifest.profile.name != self.profile:
                raise ArtifactError(
                    f"the index for {self.profile} points to an artifact built for "
                    f"{verified.manifest.profile.name}")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
        old = self.cached(model)
        new_state = {"version": index.version, "sha256": index.artifact.sha256, "artifact": name,
                     "model_version": index.model_version}
        state_tmp = directory / "state.json.tmp"
        state_tmp.write_text(json.dumps(new_state))
        os.replace(state_tmp, directory / "state.json")
        if old is not None and old != target:
            old.unlink(missing_ok=True)
        return target

    def session(self, model: str, **kwargs: Any) -> Any:
        from .session import InferenceSession

        return InferenceSession(self.update(model), trusted_keys=self.trusted,
                                expected_profile=self.profile, **kwargs)
