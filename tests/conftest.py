"""Shared fixtures: sample models, a signing key, and one warm compile worker per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from compiler import samples
from compiler.signing import LocalKeySigner, generate_key


@pytest.fixture(scope="session", autouse=True)
def _tuning_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A fresh tuning database per test session (never the user's cache), and a short schedule
    search per build (tests check correctness; benchmarks measure the default budget)."""
    import os

    saved = {k: os.environ.get(k) for k in ("EDGEFORGE_TUNING_DB", "EDGEFORGE_SCHEDULE_BUDGET_S")}
    os.environ["EDGEFORGE_TUNING_DB"] = str(tmp_path_factory.mktemp("tuning-db"))
    os.environ["EDGEFORGE_SCHEDULE_BUDGET_S"] = "15"
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalKeySigner, Path]:
    d = tmp_path_factory.mktemp("keys")
    signer = generate_key(d / "signing-key.pem", d / "signing-key.pub.pem")
    return signer, d / "signing-key.pub.pem"


@pytest.fixture(scope="session")
def signer(keypair: tuple[LocalKeySigner, Path]) -> LocalKeySigner:
    return keypair[0]


@pytest.fixture(scope="session")
def public_key(keypair: tuple[LocalKeySigner, Path]) -> Path:
    return keypair[1]


@pytest.fixture(scope="session")
def tiny_model() -> bytes:
    return samples.tiny_cnn()


@pytest.fixture(scope="session")
def worker() -> Iterator[object]:
    from compiler.worker import CompileWorker

    with CompileWorker(timeout_s=600) as w:
        yield w
