"""Bad inputs through the CLI: a specific message, exit status 2, no traceback, no compile."""

import json

import pytest

from compiler import samples
from compiler.cli import main


@pytest.fixture(autouse=True)
def _key(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEFORGE_SIGNING_KEY", str(tmp_path / "k.pem"))


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def _write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_not_onnx(tmp_path, capsys):
    code, _, err = _run(capsys, "compile", _write(tmp_path, "a.onnx", b"hello world" * 10),
                        "-p", "x86_64", "--out", str(tmp_path))
    assert code == 2 and "not an ONNX model" in err


def test_truncated(tmp_path, capsys):
    data = samples.tiny_cnn()
    code, _, err = _run(capsys, "compile", _write(tmp_path, "t.onnx", data[:-40]), "-p", "x86_64")
    assert code == 2 and "truncated or damaged" in err


def test_unsupported_ops_json(tmp_path, capsys):
    code, out, _ = _run(capsys, "compile", _write(tmp_path, "u.onnx", samples.unsupported_ops_model()),
                        "-p", "x86_64", "--json")
    assert code == 2
    report = json.loads(out)
    assert report["error"] == "unsupported_operator"
    assert "rand_1, rand_2" in report["message"] and "bernoulli_a" in report["message"]


def test_dynamic_input(tmp_path, capsys):
    code, _, err = _run(capsys, "compile", _write(tmp_path, "d.onnx", samples.dynamic_batch_cnn()),
                        "-p", "x86_64")
    assert code == 2 and "--input-shape image=1,3,8,8" in err


def test_oversized(tmp_path, capsys):
    code, _, err = _run(capsys, "compile", _write(tmp_path, "m.onnx", samples.tiny_cnn()),
                        "-p", "x86_64", "--max-model-mb", "0")
    assert code == 2 and "over the limit" in err


def test_unknown_profile(tmp_path, capsys):
    code, _, err = _run(capsys, "compile", _write(tmp_path, "m.onnx", samples.tiny_cnn()),
                        "-p", "raspberry")
    assert code == 2 and "unknown profile 'raspberry'" in err


def test_invalid_profile_file(tmp_path, capsys):
    pf = _write(tmp_path, "profiles.json", json.dumps(
        {"profiles": [{"name": "x", "revision": 0}]}).encode())
    code, _, err = _run(capsys, "profiles", "--profiles-file", pf)
    assert code == 2 and "invalid profile entry (profile x)" in err


def test_missing_file(tmp_path, capsys):
    code, _, err = _run(capsys, "compile", str(tmp_path / "nope.onnx"), "-p", "x86_64")
    assert code == 2 and "no such file" in err


def test_profiles_json(capsys):
    code, out, _ = _run(capsys, "profiles", "--json")
    assert code == 0
    names = [p["name"] for p in json.loads(out)]
    assert "jetson-orin" in names and "armv7" in names


def test_validate_command(tmp_path, capsys):
    code, out, _ = _run(capsys, "validate", _write(tmp_path, "m.onnx", samples.tiny_cnn()), "--json")
    assert code == 0 and json.loads(out)["inputs"][0]["name"] == "input"
