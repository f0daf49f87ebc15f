"""Verification of an ill-conditioned model through the real verify path (compiler/verify.py):
a real TVM build, run by the device runtime in a child process, against onnxruntime.

The model, ``sin(exp(x) * 1e5)``, amplifies one ulp of ``exp(x)`` (TVM's and onnxruntime's
exp differ by an ulp on about a fifth of random inputs) to up to 0.1 of the output, and nudging
onnxruntime's own input by one ulp moves its output by up to 0.56 on 45% of the elements: the
plain check fails (max error 0.11 > 1e-3), the reference-noise check accepts the artifact
and says so. The same library checked against a model with a wrong constant (a real bug) fails
both when the reference is ill-conditioned and when it is not."""

from __future__ import annotations

import numpy as np
import pytest

N = 4096


def _model(k: float = 1e5, well_conditioned: bool = False) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    if well_conditioned:  # 0.5 * x + 0.25: one-ulp input nudges stay far below the tolerance
        nodes = [helper.make_node("Mul", ["x", "k"], ["xk"]),
                 helper.make_node("Add", ["xk", "c"], ["y"])]
        inits = [numpy_helper.from_array(np.array(0.5, np.float32), "k"),
                 numpy_helper.from_array(np.array(0.25, np.float32), "c")]
    else:
        nodes = [helper.make_node("Exp", ["x"], ["e"]), helper.make_node("Mul", ["e", "k"], ["ek"]),
                 helper.make_node("Sin", ["ek"], ["y"])]
        inits = [numpy_helper.from_array(np.array(k, np.float32), "k")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                         [1, N])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, N])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    from bench.conformance import TARGET
    from compiler._build import BuildRequest, build

    out = tmp_path_factory.mktemp("noise") / "m.so"
    build(BuildRequest(model_bytes=_model(), target=TARGET, cc="g++", out_path=str(out),
                       optimize={"measure": False, "candidates": 1}), lambda _: None)
    return out


def _verify(library, model: bytes):
    from compiler.profiles import load_profiles
    from compiler.validation import TensorInfo
    from compiler.verify import verify_library

    return verify_library(library, load_profiles().get("x86_64"), model,
                          (TensorInfo("x", (1, N), "float32"),), seed=0, tolerance=1e-3)


def test_ill_conditioned_model_is_verified_within_reference_noise(library):
    from compiler.packaging import LIBRARY_NAME
    from edgeforge_runtime.manifest import FileEntry, Manifest, ModelInfo, ProfileInfo, TensorSpec

    v = _verify(library, _model())
    assert v.verified and v.within_reference_noise and v.method == "native"
    assert v.max_rel_error > v.tolerance == 1e-3  # the plain check failed
    noise = v.reference_noise
    assert noise["runs"] == 8 and noise["unusable_runs"] == 0 and noise["runs_beyond_tolerance"] >= 1
    assert v.max_rel_error <= noise["dominating_run"]["max_rel_error"] <= noise["max_rel_error"]
    assert (0 < noise["ours_fraction_beyond_tolerance"]
            <= noise["dominating_run"]["fraction_beyond_tolerance"])
    assert v.reason.startswith("within onnxruntime's own noise, not the tolerance")

    # what the manifest stores, and what a reader gets back (canonical JSON: finite numbers)
    m = Manifest(model=ModelInfo("m", "1", "0" * 64, 1),
                 profile=ProfileInfo("x86_64", "x86_64", "cpu", {"kind": "llvm"}),
                 abi={}, library=LIBRARY_NAME, inputs=(TensorSpec("x", (1, N), "float32"),),
                 outputs=(TensorSpec("y", (1, N), "float32"),),
                 files=(FileEntry(LIBRARY_NAME, 1, "0" * 64),), verification=v)
    assert Manifest.from_json(m.to_json()).verification == v


@pytest.mark.parametrize("well_conditioned", [False, True])
def test_a_real_error_still_fails(library, well_conditioned):
    from compiler.exceptions import VerificationError

    # the library computes sin(exp(x) * 1e5); the reference, something else
    with pytest.raises(VerificationError) as e:
        _verify(library, _model(1.001e5, well_conditioned))
    msg = str(e.value)
    assert "> 0.001" in msg
    assert ("well-conditioned" if well_conditioned else "exceed that noise") in msg, msg
