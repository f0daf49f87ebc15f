"""A warm, bounded child process for TVM builds.

TVM work runs in a separate process so that a pathological model (a crash in C++, runaway memory,
an endless compile) cannot take the caller down. The process imports TVM once and serves many
builds, so ``import tvm`` (6–14 s) is paid once per worker, not per compile.

Bounds: ``timeout_s`` of wall time per build and ``memory_limit_mb`` of resident memory (polled);
over either, the worker is killed and the build fails with a specific error. A crashed worker is
replaced on the next build.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from . import exceptions as exc
from ._build import BuildRequest, BuildResult

logger = logging.getLogger(__name__)

__all__ = ["CompileWorker"]

_POLL_S = 0.1


def _serve(conn: Connection) -> None:  # pragma: no cover - runs in the child
    """Child main loop: warm up, then answer build requests until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    logging.basicConfig(level=os.environ.get("EDGEFORGE_WORKER_LOG", "WARNING"))
    from ._build import build, warm_up

    t = time.perf_counter()
    warm_up()
    conn.send(("ready", time.perf_counter() - t))
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg[0] == "stop":
            return
        _, req = msg
        try:
            result = build(req, lambda stage: conn.send(("progress", stage)))
            conn.send(("ok", result))
        except Exception as e:
            name = type(e).__name__ if isinstance(e, exc.EdgeforgeError) else "CompileError"
            message = str(e) if isinstance(e, exc.EdgeforgeError) else f"{type(e).__name__}: {e}"
            conn.send(("error", name, message, traceback.format_exc()))


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class CompileWorker:
    """Serve builds from one warm child process. Use as a context manager or call close()."""

    def __init__(self, timeout_s: float = 1800.0, memory_limit_mb: int = 12_288) -> None:
        self.timeout_s = timeout_s
        self.memory_limit_mb = memory_limit_mb
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._conn: Connection | None = None
        self.warmup_s: float | None = None

    def __enter__(self) -> CompileWorker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_alive() else None

    def start(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            return
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(target=_serve, args=(child,), daemon=True,
                                       name="edgeforge-compile-worker")
        self._proc.start()
        child.close()
        self._conn = parent
        kind, *rest = self._recv(deadline=time.monotonic() + 300, stage="start-up")
        if kind != "ready":
            raise exc.CompileError(f"the compile worker failed to start: {rest}")
        self.warmup_s = rest[0]
        logger.info("compile worker %s ready after %.1f s", self._proc.pid, self.warmup_s)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.send(("stop",))
        if self._proc is not None:
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._kill()
        self._proc = None
        self._conn = None

    def _kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=10)
        self._proc = None
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _recv(self, deadline: float, stage: str) -> tuple[Any, ...]:
        assert self._conn is not None and self._proc is not None
        while True:
            if self._conn.poll(_POLL_S):
                try:
                    return self._conn.recv()  # type: ignore[no-any-return]
                except EOFError:
                    pass  # the child died; reported below
            if not self._proc.is_alive() or (self._conn.closed):
                code = self._proc.exitcode
                self._kill()
                how = (f"was killed by signal {-code}" if code is not None and code < 0
                       else f"exited with status {code}")
                raise exc.CompileResourceError(
                    f"the compiler process {how} during {stage}; the model triggers a crash "
                    "in TVM (the report has the details)"
                )
            rss = _rss_mb(self._proc.pid)
            if rss > self.memory_limit_mb:
                self._kill()
                raise exc.CompileResourceError(
                    f"the compiler used {rss:.0f} MB during {stage}, over the limit of "
                    f"{self.memory_limit_mb} MB; the model is too large for this build "
                    "environment (raise the memory limit, or compile on a bigger machine)"
                )
            if time.monotonic() > deadline:
                self._kill()
                raise exc.CompileTimeoutError(
                    f"{stage} did not finish within {self.timeout_s:.0f} s and was stopped"
                )

    def build(self, request: BuildRequest,
              progress: Callable[[str], None] | None = None) -> BuildResult:
        self.start()
        assert self._conn is not None
        self._conn.send(("build", request))
        deadline = time.monotonic() + self.timeout_s
        stage = "the build"
        while True:
            kind, *rest = self._recv(deadline, stage)
            if kind == "progress":
                stage = f"the {rest[0]} stage"
                if progress:
                    progress(rest[0])
            elif kind == "ok":
                return rest[0]  # type: ignore[no-any-return]
            elif kind == "error":
                name, message, tb = rest
                logger.debug("worker traceback:\n%s", tb)
                cls = getattr(exc, name, exc.CompileError)
                if not (isinstance(cls, type) and issubclass(cls, exc.EdgeforgeError)):
                    cls = exc.CompileError
                if cls in (exc.DynamicShapeError, exc.UnsupportedOperatorError):
                    cls = exc.CompileError
                raise cls(message)
