from datetime import UTC, datetime

from compiler.publish import next_index, signed_index
from edgeforge_runtime.repository import parse_index
from edgeforge_runtime.signature import TrustedKeys

NOW = datetime(2026, 11, 24, tzinfo=UTC)


def _next(current, model_version, sha):
    return next_index(current, model="m", profile="rpi4", model_version=model_version,
                      artifact_path=f"m/{model_version}/rpi4.efa", size=10, sha256=sha, now=NOW)


def test_versions_increase_and_never_go_back(signer):
    trusted = TrustedKeys.load([signer.public_key_der])
    first = signed_index(_next(None, "1", "a" * 64), signer)
    idx = parse_index(first, trusted, "m", "rpi4", now=NOW)
    assert idx.version == 1 and idx.artifact.path == "m/1/rpi4.efa"
    second = signed_index(_next(first, "2", "b" * 64), signer)
    assert parse_index(second, trusted, "m", "rpi4", now=NOW).version == 2
    assert _next(second, "1", "c" * 64) is None  # an older model version never replaces a newer
    assert _next(second, "2", "b" * 64) is None  # the same artifact again: idempotent
