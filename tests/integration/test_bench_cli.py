"""`edgeforge bench` reports a correct comparison (correctness only: no timing is asserted)."""

import json

from compiler.cli import main


def test_bench_json(tmp_path, tiny_model, capsys, monkeypatch):
    monkeypatch.setenv("EDGEFORGE_SIGNING_KEY", str(tmp_path / "k.pem"))
    model = tmp_path / "tiny.onnx"
    model.write_bytes(tiny_model)
    assert main(["bench", str(model), "--repeat", "3", "--out", str(tmp_path / "b"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["profile"] == "x86_64" and result["repeat"] == 3
    assert result["max_abs_error"] < 1e-4
    assert result["edgeforge_ms"] > 0 and result["onnxruntime_ms"] > 0
    assert abs(result["ratio"] - result["edgeforge_ms"] / result["onnxruntime_ms"]) < 1e-9
