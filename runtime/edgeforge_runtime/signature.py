"""Signature envelope over the manifest bytes, and the set of keys a device trusts.

``manifest.sig`` is canonical JSON::

    {"signatures": [{"keyid": "<sha256 of DER SPKI, hex>", "alg": "ecdsa-p256-sha256",
                     "sig": "<base64 DER ECDSA-Sig-Value>"}]}

Each signature covers the exact bytes of ``manifest.json``. An artifact is accepted when at least
``threshold`` distinct trusted keys produced a valid signature.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ._ecdsa import InvalidKey, PublicKey
from .exceptions import SignatureError, UntrustedKeyError

__all__ = ["ALGORITHM", "Signature", "TrustedKeys", "dump_signatures", "load_signatures"]

ALGORITHM = "ecdsa-p256-sha256"
_MAX_SIGNATURES = 16


@dataclass(frozen=True)
class Signature:
    keyid: str
    sig: bytes
    alg: str = ALGORITHM


def dump_signatures(signatures: Iterable[Signature]) -> bytes:
    items = [
        {"keyid": s.keyid, "alg": s.alg, "sig": base64.b64encode(s.sig).decode("ascii")}
        for s in signatures
    ]
    return json.dumps({"signatures": items}, sort_keys=True, separators=(",", ":")).encode()


def load_signatures(data: bytes) -> list[Signature]:
    try:
        raw = json.loads(data.decode("utf-8"))
        items = raw["signatures"]
        if not isinstance(items, list) or not 0 < len(items) <= _MAX_SIGNATURES:
            raise ValueError("signatures must be a non-empty list")
        return [
            Signature(keyid=str(i["keyid"]), alg=str(i["alg"]),
                      sig=base64.b64decode(i["sig"], validate=True))
            for i in items
        ]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, binascii.Error) as e:
        raise SignatureError(f"manifest.sig is malformed: {e}") from e


class TrustedKeys:
    """The public keys a device trusts to sign artifacts (PEM files, PEM text or DER bytes)."""

    def __init__(self, keys: Iterable[PublicKey], threshold: int = 1) -> None:
        self._keys = {k.keyid: k for k in keys}
        if not self._keys:
            raise ValueError("at least one trusted key is required")
        if not 1 <= threshold <= len(self._keys):
            raise ValueError(f"threshold {threshold} is not between 1 and {len(self._keys)}")
        self.threshold = threshold

    @classmethod
    def load(cls, sources: Iterable[str | os.PathLike[str] | bytes], threshold: int = 1
             ) -> TrustedKeys:
        keys = []
        for src in sources:
            if isinstance(src, bytes):
                data = src
            elif isinstance(src, str) and "-----BEGIN" in src:
                data = src.encode()
            else:
                data = Path(src).read_bytes()
            try:
                key = PublicKey.from_pem(data) if b"-----BEGIN" in data else PublicKey(data)
            except InvalidKey as e:
                name = src if not isinstance(src, bytes) else "<bytes>"
                raise ValueError(f"trusted key {str(name)[:200]!r} is unusable: {e}") from e
            keys.append(key)
        return cls(keys, threshold)

    @property
    def keyids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, message: bytes, signatures: list[Signature]) -> list[str]:
        """Return the keyids whose valid signatures meet the threshold, or raise."""
        good: set[str] = set()
        seen_trusted = False
        for s in signatures:
            key = self._keys.get(s.keyid)
            if key is None:
                continue
            seen_trusted = True
            if s.alg != ALGORITHM:
                raise SignatureError(f"unsupported signature algorithm {s.alg!r}")
            if key.verify(s.sig, message):
                good.add(s.keyid)
        if len(good) >= self.threshold:
            return sorted(good)
        # Untrusted only when no signature claims a trusted key: an invalid signature by a trusted
        # key means the manifest or its signature was modified, whatever else signed it.
        if seen_trusted:
            raise SignatureError(
                f"the manifest signature is invalid ({len(good)} valid of {self.threshold} "
                "required): the manifest or its signature was modified"
            )
        raise UntrustedKeyError(
            "the artifact is signed by key(s) "
            + ", ".join(s.keyid[:16] for s in signatures)
            + " but none of them is trusted here (trusted: "
            + ", ".join(k[:16] for k in self.keyids)
            + ")"
        )
