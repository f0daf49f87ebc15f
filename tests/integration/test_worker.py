"""The compile worker's bounds: time, memory, crashes, and recovery afterwards."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from compiler._build import BuildRequest
from compiler.exceptions import CompileError, CompileResourceError, CompileTimeoutError
from compiler.validation import validate_model
from compiler.worker import CompileWorker

TARGET = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "x86-64-v2"}


def _request(tmp_path, model: bytes) -> BuildRequest:
    return BuildRequest(model_bytes=validate_model(model).serialized(), target=TARGET, cc="g++",
                        out_path=str(tmp_path / "m.so"))


def test_timeout_then_recovery(tmp_path, tiny_model):
    with CompileWorker(timeout_s=0.05) as w:
        w.start()
        with pytest.raises(CompileTimeoutError, match="did not finish within"):
            w.build(_request(tmp_path, tiny_model))
        assert w.pid is None  # the stuck worker was killed
        w.timeout_s = 600
        result = w.build(_request(tmp_path, tiny_model))
        assert os.path.getsize(result.library) > 0


def test_memory_bound(tmp_path, tiny_model):
    with CompileWorker(memory_limit_mb=1) as w, pytest.raises(CompileResourceError, match="over the limit"):
        w.build(_request(tmp_path, tiny_model))


def test_crash_is_reported_and_worker_replaced(tmp_path, tiny_model, worker):
    worker.start()
    pid = worker.pid
    # SIGKILL, as the kernel's OOM killer would send: it cannot be caught. (An external SIGSEGV is
    # unreliable here: TVM installs a backtrace handler that can deadlock on a signal sent from
    # outside while another thread holds the allocator lock.)
    timer = threading.Timer(0.01, os.kill, (pid, signal.SIGKILL))
    timer.start()
    with pytest.raises(CompileResourceError, match="killed by signal 9"):
        worker.build(_request(tmp_path, tiny_model))
    timer.join()
    result = worker.build(_request(tmp_path, tiny_model))  # a fresh worker serves the next build
    assert worker.pid != pid and os.path.getsize(result.library) > 0


def test_frontend_failure_is_a_compile_error(tmp_path, worker):
    with pytest.raises(CompileError):
        worker.build(BuildRequest(model_bytes=b"\x08\x07garbage", target=TARGET, cc="g++",
                                  out_path=str(tmp_path / "m.so")))
