import json

import pytest

from compiler.exceptions import ProfileError
from compiler.profiles import load_profiles

REQUIRED = ["x86_64", "x86_64-avx2", "x86_64-avx512", "aarch64", "rpi4", "rpi5", "graviton",
            "armv7", "cuda-sm80", "cuda-sm90", "jetson-orin", "jetson-xavier"]


def test_builtin_profiles_cover_the_required_set():
    reg = load_profiles()
    assert set(REQUIRED) <= set(reg.names())
    rpi4 = reg.get("rpi4")
    assert rpi4.target == {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
                           "mattr": ["+neon"]}
    assert rpi4.toolchain.cc == "aarch64-linux-gnu-g++" and rpi4.verify == "qemu-user"
    orin = reg.get("jetson-orin")
    assert orin.device == "cuda" and orin.cuda_arch == "sm_87"
    assert orin.host_target["mcpu"] == "cortex-a78ae"
    assert reg.get("jetson-xavier").host_target["mcpu"] == "carmel"
    armv7 = reg.get("armv7")
    assert armv7.target["mfloat-abi"] == "hard" and armv7.arch == "armv7l"


def test_unknown_profile_suggests_close_names():
    with pytest.raises(ProfileError, match=r"unknown profile 'rpi3'.*Did you mean.*rpi4"):
        load_profiles().get("rpi3")


def test_user_file_adds_and_overrides(tmp_path):
    base = load_profiles().get("rpi4").model_dump()
    custom = dict(base, name="my-board", description="custom board",
                  target=dict(base["target"], mcpu="cortex-a55"))
    override = dict(base, description="overridden")
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"profiles": [custom, override]}))
    reg = load_profiles(path)
    assert reg.get("my-board").target["mcpu"] == "cortex-a55"
    assert reg.get("rpi4").description == "overridden"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"target": {"kind": "opencl"}}, "target.kind must be 'llvm' or 'cuda'"),
        ({"target": {"kind": "llvm"}}, "needs 'mtriple'"),
        ({"arch": "mips"}, "arch"),
        ({"name": "Bad Name"}, "name"),
        ({"device": "cuda"}, "device 'cuda' goes with a cuda target"),
        ({"unexpected": 1}, "unexpected"),
    ],
)
def test_invalid_profile_entry_is_named(tmp_path, entry, message):
    base = load_profiles().get("rpi4").model_dump()
    base.update(name="broken-board")
    base.update(entry)
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"profiles": [base]}))
    with pytest.raises(ProfileError) as e:
        load_profiles(path)
    assert message in str(e.value)
    assert str(path) in str(e.value)


def test_profile_file_not_json(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{not json")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profiles(path)
