"""The ``edgeforge-runtime`` command line: output, exit status, and no tracebacks for expected
errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from edgeforge_runtime import TrustedKeys
from edgeforge_runtime.cli import main


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process: returns (exit status, stdout, stderr)."""

    def run(*args: object) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def tampered(artifacts, tmp_path) -> Path:
    data = bytearray(artifacts.host.read_bytes())
    with tarfile.open(artifacts.host) as tar:
        lib = tar.getmember("model.so")
    data[lib.offset_data + lib.size // 2] ^= 0xFF
    path = tmp_path / "tampered.efa"
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def x_npy(artifacts, tmp_path) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, artifacts.feed["input"])
    return path


@pytest.mark.parametrize("command", ["inspect", "verify", "run", "bench"])
def test_every_command_has_help_with_an_example(capsys, command) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "example" in capsys.readouterr().out


def test_help_text(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "edgeforge-runtime verify" in out and "exit status" in out
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    assert "--input" in out and "NAME=FILE.npy" in out and "examples:" in out


def test_usage_errors_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["verify", "x.efa"])  # --trusted-key is required
    assert info.value.code == 2
    assert "--trusted-key" in capsys.readouterr().err


# --- inspect -------------------------------------------------------------------------------------


def test_inspect_without_a_key_says_unverified(cli, artifacts) -> None:
    code, out, _ = cli("inspect", artifacts.host)
    assert code == 0
    assert "UNVERIFIED" in out and "[claimed, not verified]" in out
    assert "input         input: float32[1, 3, 8, 8]" in out
    keyid = TrustedKeys.load([artifacts.public_key]).keyids[0]
    assert keyid in out


def test_inspect_json(cli, artifacts) -> None:
    code, out, _ = cli("inspect", artifacts.host, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["verification"] == {"verified": False, "checked": False}
    assert info["manifest"]["format_version"] == 1
    assert info["signatures"][0]["alg"] == "ecdsa-p256-sha256"
    assert info["compatible_here"]["ok"] is True


def test_inspect_with_a_key_verifies(cli, artifacts, tampered) -> None:
    code, out, _ = cli("inspect", artifacts.host, "--trusted-key", artifacts.public_key)
    assert code == 0 and "VERIFIED: signed by trusted key" in out and "UNVERIFIED" not in out
    code, out, _ = cli("inspect", tampered, "-k", artifacts.public_key, "--json")
    assert code == 1
    assert json.loads(out)["verification"]["error"] == "DigestMismatchError"


def test_inspect_foreign_artifact_shows_incompatibility(cli, artifacts) -> None:
    if artifacts.foreign is None:
        pytest.skip("no artifact for another architecture")
    code, out, _ = cli("inspect", artifacts.foreign)
    assert code == 0 and "NOT compatible" in out and "ProfileMismatchError" in out


# --- verify --------------------------------------------------------------------------------------


def test_verify_ok(cli, artifacts) -> None:
    code, out, err = cli("verify", artifacts.host, "--trusted-key", artifacts.public_key)
    assert (code, err) == (0, "")
    assert out.startswith("OK: ")
    code, out, _ = cli("verify", artifacts.host, "-k", artifacts.public_key, "--json")
    assert code == 0 and json.loads(out)["ok"] is True


def test_verify_tampered(cli, artifacts, tampered) -> None:
    code, out, err = cli("verify", tampered, "-k", artifacts.public_key)
    assert code == 1 and out == ""
    assert err.startswith("edgeforge-runtime: error: DigestMismatchError: model.so: sha256")
    code, out, _ = cli("verify", tampered, "-k", artifacts.public_key, "--json")
    assert json.loads(out) == {"ok": False, "error": "DigestMismatchError",
                               "message": json.loads(out)["message"]}


def test_verify_untrusted_key_and_profile(cli, artifacts, other_key) -> None:
    code, _, err = cli("verify", artifacts.host, "-k", other_key.pem_path)
    assert code == 1 and "UntrustedKeyError" in err
    code, _, err = cli("verify", artifacts.host, "-k", artifacts.public_key, "--profile", "rpi5")
    assert code == 1 and "ProfileMismatchError" in err


def test_verify_for_another_device(cli, artifacts) -> None:
    if artifacts.foreign is None:
        pytest.skip("no artifact for another architecture")
    code, _, err = cli("verify", artifacts.foreign, "-k", artifacts.public_key)
    assert code == 1 and "ProfileMismatchError" in err
    from edgeforge_runtime import read_manifest

    arch = read_manifest(artifacts.foreign)[0].profile.arch
    code, out, _ = cli("verify", artifacts.foreign, "-k", artifacts.public_key, "--arch", arch)
    assert code == 0 and f"runs on {arch}" in out


def test_verify_not_an_artifact(cli, artifacts, tmp_path) -> None:
    junk = tmp_path / "junk.efa"
    junk.write_text("hello")
    code, _, err = cli("verify", junk, "-k", artifacts.public_key)
    assert code == 1 and "ArchiveError" in err


@pytest.mark.parametrize("what", ["artifact", "key"])
def test_missing_files_exit_2(cli, artifacts, tmp_path, what) -> None:
    art = tmp_path / "nope.efa" if what == "artifact" else artifacts.host
    key = tmp_path / "nope.pem" if what == "key" else artifacts.public_key
    code, _, err = cli("verify", art, "-k", key)
    assert code == 2 and "no such file" in err and "nope" in err


def test_unusable_key_exits_2(cli, artifacts, tmp_path) -> None:
    key = tmp_path / "bad.pem"
    key.write_text("not a key")
    code, _, err = cli("verify", artifacts.host, "-k", key)
    assert code == 2 and "ValueError" in err and "unusable" in err


# --- run -----------------------------------------------------------------------------------------


def test_run_writes_outputs(cli, artifacts, x_npy, tmp_path) -> None:
    out_npz = tmp_path / "y.npz"
    code, out, err = cli("run", artifacts.host, "-k", artifacts.public_key,
                         "--input", f"input={x_npy}", "--output", out_npz, "--threads", "1")
    assert code == 0, err
    assert "verified" in out and "output output: float32[1, 4, 8, 8]" in out
    with np.load(out_npz) as data:
        np.testing.assert_allclose(data["output"], artifacts.expected[0], rtol=1e-4, atol=1e-5)


def test_run_json_and_input_forms(cli, artifacts, x_npy, tmp_path) -> None:
    npz = tmp_path / "inputs.npz"
    np.savez(npz, input=artifacts.feed["input"])
    for spec in (str(x_npy), str(npz)):  # bare .npy (single-input model) and .npz by name
        code, out, _ = cli("run", artifacts.host, "-k", artifacts.public_key, "-i", spec, "--json")
        assert code == 0
        result = json.loads(out)
        [o] = result["outputs"]
        assert o["shape"] == [1, 4, 8, 8] and len(o["values"]) == 256
        np.testing.assert_allclose(np.array(o["values"]).reshape(1, 4, 8, 8),
                                   artifacts.expected[0], rtol=1e-4, atol=1e-5)


def test_run_random_inputs(cli, artifacts) -> None:
    code, out, _ = cli("run", artifacts.host, "-k", artifacts.public_key, "--random-inputs", "3")
    assert code == 0 and "output output" in out


@pytest.mark.parametrize(("make", "match"), [
    (lambda d: np.zeros((1, 3, 8, 9), np.float32), "ValueError: input 'input' has shape"),
    (lambda d: np.zeros((1, 3, 8, 8), np.float64), "ValueError: input 'input' has dtype float64"),
    (lambda d: np.array([object()], dtype=object), "not a readable .npy"),
], ids=["shape", "dtype", "pickled-object"])
def test_run_bad_feed_exits_2(cli, artifacts, tmp_path, make, match) -> None:
    path = tmp_path / "bad.npy"
    np.save(path, make(None), allow_pickle=True)
    code, out, err = cli("run", artifacts.host, "-k", artifacts.public_key, "-i", f"input={path}")
    assert code == 2 and out == ""
    assert match in err and "Traceback" not in err


def test_run_input_errors(cli, artifacts, x_npy, tmp_path) -> None:
    code, _, err = cli("run", artifacts.host, "-k", artifacts.public_key)
    assert code == 2 and "--input" in err
    code, _, err = cli("run", artifacts.host, "-k", artifacts.public_key, "-i", "other=" + str(x_npy))
    assert code == 2 and "unexpected ['other']" in err
    code, _, err = cli("run", artifacts.host, "-k", artifacts.public_key, "-i", tmp_path / "no.npy")
    assert code == 2 and "no such file" in err
    text = tmp_path / "text.npy"
    text.write_text("1,2,3")
    code, _, err = cli("run", artifacts.host, "-k", artifacts.public_key, "-i", text)
    assert code == 2 and "not a readable .npy" in err


def test_run_cuda_artifact_without_driver_exits_3(cli, artifacts, x_npy, helpers) -> None:
    if artifacts.cuda is None or helpers.has_cuda_driver():
        pytest.skip("needs a CUDA artifact and a machine without a CUDA driver")
    code, _, err = cli("run", artifacts.cuda, "-k", artifacts.public_key, "-i", x_npy)
    assert code == 3 and "DeviceUnavailableError" in err and "libcuda" in err


# --- bench ---------------------------------------------------------------------------------------


def test_bench_json(cli, artifacts) -> None:
    code, out, err = cli("bench", artifacts.host, "-k", artifacts.public_key, "--runs", "20",
                         "--warmup", "2", "--cold-runs", "1", "--threads", "1", "--json")
    assert code == 0, err
    r = json.loads(out)
    lat = r["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    cold = r["cold_start"]
    assert cold["processes"] == 1
    assert cold["total_s"] == pytest.approx(cold["import_s"] + cold["load_s"] + cold["first_run_s"])
    assert cold["process_s"] > cold["total_s"] > 0
    assert 10 < cold["peak_rss_mb"] < 2000 and r["peak_rss_mb_bench"] > 10


def test_bench_text(cli, artifacts) -> None:
    code, out, _ = cli("bench", artifacts.host, "-k", artifacts.public_key, "-n", "5",
                       "--cold-runs", "0")
    assert code == 0
    assert "p50" in out and "p99" in out and "peak RSS" in out and "cold start" not in out


def test_expected_errors_print_no_traceback(artifacts, tampered) -> None:
    """Through the real entry point, in a fresh process."""
    proc = subprocess.run([sys.executable, "-m", "edgeforge_runtime.cli", "run", str(tampered),
                           "-k", str(artifacts.public_key), "--random-inputs", "0"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith("edgeforge-runtime: error: DigestMismatchError")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
