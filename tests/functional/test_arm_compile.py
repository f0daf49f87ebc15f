"""ArmCompile: ingest sends AArch64 CPU profiles to the arm64 (Graviton) compile function's queue,
where the fast build times its sampled schedules natively; everything else (x86_64, armv7, CUDA
including jetson) to the compile queue. Without the arm64 queue nothing changes. No TVM here."""

from __future__ import annotations

import copy

import pytest
from aws_stack import MODELS_BUCKET, Stack, conv_relu_model

from compiler.jobs import CompileMessage, builds_on_arm64
from compiler.profiles import load_profiles

#: One profile of every kind: x86_64 CPU, AArch64 CPU (four), armv7, CUDA on x86_64 and on a Jetson.
PROFILES = ["x86_64", "rpi4", "graviton", "armv7", "cuda-sm80", "jetson-orin", "aarch64", "rpi5"]
ARM64 = ["rpi4", "graviton", "aarch64", "rpi5"]
MAIN = ["x86_64", "armv7", "cuda-sm80", "jetson-orin"]


def test_which_builtin_profiles_build_on_arm64():
    chosen = {p.name for p in load_profiles() if builds_on_arm64(p)}
    assert chosen == {"aarch64", "rpi4", "rpi5", "graviton"}
    # and that is every AArch64 CPU profile, nothing else
    for p in load_profiles():
        assert builds_on_arm64(p) == (p.arch == "aarch64" and p.device == "cpu"), p.name


def _ingest(stack: Stack, key: str, profiles: list[str]) -> list[dict]:
    stack.upload(key, conv_relu_model(), {"profiles": profiles})
    events = [e for e in stack.s3_events() if "Records" in e]
    assert len(events) == 1
    outcomes = stack.run_ingest(events[0])["outcomes"]
    assert [o["status"] for o in outcomes] == ["accepted"], outcomes
    return events


def _profiles(messages: list[dict]) -> list[str]:
    return sorted(CompileMessage.model_validate_json(m["Body"]).profile for m in messages)


def test_arm64_profiles_go_to_the_arm64_queue(arm_stack: Stack):
    stack = arm_stack
    key = "models/mixed/mixed.onnx"
    stack.upload(key, conv_relu_model(), {"profiles": PROFILES})
    [event] = [e for e in stack.s3_events() if "Records" in e]
    [outcome] = stack.run_ingest(event)["outcomes"]
    assert outcome["status"] == "accepted" and outcome["profiles"] == PROFILES
    assert sorted(outcome["arm64_profiles"]) == sorted(ARM64)

    arm, main = stack.arm_compile_messages(), stack.compile_messages()
    assert _profiles(arm) == sorted(ARM64)
    assert _profiles(main) == sorted(MAIN)
    # the same message either way: same upload, version and source bytes
    parsed = [CompileMessage.model_validate_json(m["Body"]) for m in arm + main]
    assert {(m.model_name, m.version, m.source.sha256) for m in parsed} == {
        ("mixed", 1, parsed[0].source.sha256)}
    # every profile is queued in the report, wherever it is built
    report = stack.get_json(MODELS_BUCKET, key + ".report.json")
    assert {p: s["status"] for p, s in report["profiles"].items()} == dict.fromkeys(
        PROFILES, "queued")

    # a second delivery of the same upload sends nothing to either queue
    [again] = stack.run_ingest(copy.deepcopy(event))["outcomes"]
    assert again["status"] == "duplicate"
    assert stack.arm_compile_messages() == [] and stack.compile_messages() == []


@pytest.mark.parametrize(("profiles", "arm"), [(["x86_64", "cuda-sm80"], []),
                                               (["rpi4"], ["rpi4"])])
def test_uploads_with_one_kind_of_profile(arm_stack: Stack, profiles, arm):
    _ingest(arm_stack, "models/one/one.onnx", profiles)
    assert _profiles(arm_stack.arm_compile_messages()) == arm
    assert _profiles(arm_stack.compile_messages()) == sorted(set(profiles) - set(arm))


def test_without_the_arm64_queue_every_profile_goes_to_the_compile_queue(stack: Stack):
    """ArmCompile=false (the default): template.yaml sets EDGEFORGE_ARM_COMPILE_QUEUE_URL to ""."""
    assert stack.ingest.ingestor.arm64_queue is None
    stack.upload("models/mixed/mixed.onnx", conv_relu_model(), {"profiles": PROFILES})
    [event] = [e for e in stack.s3_events() if "Records" in e]
    [outcome] = stack.run_ingest(event)["outcomes"]
    assert outcome["status"] == "accepted" and "arm64_profiles" not in outcome
    assert _profiles(stack.compile_messages()) == sorted(PROFILES)
    assert stack.arm_compile_messages() == []
