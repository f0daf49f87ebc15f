"""bench.profile pairs edgeforge's fused kernels with onnxruntime's nodes (a developer tool:
checked for structure, never for speed)."""

from __future__ import annotations

import json
import re


def test_kws_kernels_pair_with_onnxruntime_nodes(tmp_path, capsys, monkeypatch):
    import os

    from bench.profile import main

    # main() sets TVM_NUM_THREADS for its own run: restored for the tests after this one
    monkeypatch.setenv("TVM_NUM_THREADS", os.environ.get("TVM_NUM_THREADS", "1"))

    out = tmp_path / "prof.json"
    assert main(["kws_dscnn", "--runs", "3", "--options", '{"measure": false}',
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    # DS-CNN: first conv, 4 x (depthwise + pointwise), the classifier: 10 onnxruntime nodes; on
    # our side the 3 pointwise -> next depthwise pairs are fused (compiler.expand_dw), so
    # 7 kernels, each fused one paired with 2 nodes
    assert len(rows) == 7, rows
    assert [r["function"].startswith("expand_dw") for r in rows] == [False, False] + [True] * 3 \
        + [False, False], rows
    assert [r["ort_op"] for r in rows] == ["Conv"] * 2 + ["Conv+Conv"] * 3 + ["Conv", "Gemm"]
    assert all("conv2d" in r["function"] for r in rows[:2] + rows[5:6])
    assert "matmul" in rows[6]["function"]
    assert all(r["ms"] > 0 and r["ort_ms"] > 0 and r["ratio"] > 0 for r in rows)
    assert re.search(r"onnxruntime \d+ nodes", capsys.readouterr().out)
