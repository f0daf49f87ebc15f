"""template.yaml: linted offline (cfn-lint, sam validate --lint), and consistent with the code
and the sample events (environment variables, queue settings, event filters)."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aws_stack import EVENTS, ROOT

from compiler.storage import parse_s3_notifications

yaml = pytest.importorskip("yaml")  # moto[server] brings PyYAML

TEMPLATE = ROOT / "template.yaml"
LINT = ROOT / "scripts" / "lint_template.sh"


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !Sub, !GetAtt…) as {"Fn": value}."""


def _tag(loader: Any, suffix: str, node: Any) -> Any:
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {suffix: value}


_CfnLoader.add_multi_constructor("!", _tag)


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return yaml.load(TEMPLATE.read_text("utf-8"), Loader=_CfnLoader)


def test_template_passes_cfn_lint_and_sam_validate():
    setup = subprocess.run(["bash", str(LINT), "--setup-only"], capture_output=True, text=True,
                           timeout=900, check=False)
    if setup.returncode != 0:
        pytest.skip("the aws-sam-cli/cfn-lint venv (.cache/sam-venv) could not be created: "
                    + (setup.stderr.strip().splitlines() or ["no output"])[-1])
    lint = subprocess.run(["bash", str(LINT)], capture_output=True, text=True, timeout=600,
                          check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_queue_settings_follow_the_lambda_guidance(template):
    params, res = template["Parameters"], template["Resources"]
    queue = res["CompileQueue"]["Properties"]
    assert queue["VisibilityTimeout"] >= 6 * params["CompileTimeout"]["MaxValue"]
    assert queue["RedrivePolicy"]["maxReceiveCount"] == 3
    assert params["CompileTimeout"]["MaxValue"] <= 900
    assert params["CompileMemory"]["MaxValue"] <= 10240
    event = res["CompileFunction"]["Properties"]["Events"]["CompileRequested"]["Properties"]
    assert event["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert event["BatchSize"] == 1


def test_signing_key_and_buckets(template):
    res = template["Resources"]
    key = res["SigningKey"]["Properties"]
    assert (key["KeySpec"], key["KeyUsage"]) == ("ECC_NIST_P256", "SIGN_VERIFY")
    for name in ("ModelsBucket", "ArtifactsBucket"):
        props = res[name]["Properties"]
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}
        assert all(props["PublicAccessBlockConfiguration"].values())
        assert props["BucketEncryption"]
    kms = [s for p in res["CompileFunction"]["Properties"]["Policies"]
           if isinstance(p, dict) and "Statement" in p for s in p["Statement"]
           if "kms:Sign" in s.get("Action", [])]
    assert kms == [{"Sid": "SignManifests", "Effect": "Allow",
                    "Action": ["kms:Sign", "kms:GetPublicKey"],
                    "Resource": {"GetAtt": "SigningKey.Arn"}}]


def test_ingest_trigger_matches_the_key_layout(template):
    from compiler.jobs import MODEL_SUFFIX, MODELS_PREFIX

    s3 = template["Resources"]["IngestFunction"]["Properties"]["Events"]["ModelUploaded"]
    rules = {r["Name"]: r["Value"] for r in s3["Properties"]["Filter"]["S3Key"]["Rules"]}
    assert rules == {"prefix": MODELS_PREFIX, "suffix": MODEL_SUFFIX}


@pytest.mark.parametrize(("function", "module"), [("IngestFunction", "functions.ingest.app"),
                                                  ("CompileFunction", "functions.compile.app"),
                                                  ("CompileArmFunction", "functions.compile.app")])
def test_environment_matches_the_settings(template, function, module):
    """Every EDGEFORGE_* variable the template sets is a settings field, and every required
    settings field is set (globals included)."""
    import ast

    source = (ROOT / Path(*module.split("."))).with_suffix(".py").read_text("utf-8")
    tree = ast.parse(source)
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Settings")]
    fields = {n.target.id: n.value is not None for n in cls.body  # name -> has a default
              if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    env = dict(template["Globals"]["Function"]["Environment"]["Variables"])
    env.update(template["Resources"][function]["Properties"]["Environment"]["Variables"])
    ours = {k.removeprefix("EDGEFORGE_").lower() for k in env if k.startswith("EDGEFORGE_")}
    assert ours <= set(fields), ours - set(fields)
    required = {name for name, has_default in fields.items() if not has_default}
    assert required <= ours, required - ours


def test_each_function_names_one_architecture(template):
    """SAM appends a function's Architectures to a list in Globals instead of replacing it, so
    the template sets it per function only: x86_64, and arm64 for the arm64 compile function."""
    assert "Architectures" not in template["Globals"]["Function"]
    archs = {name: r["Properties"].get("Architectures") for name, r in
             template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
    assert archs == {"IngestFunction": ["x86_64"], "CompileFunction": ["x86_64"],
                     "CompileArmFunction": ["arm64"]}


def test_arm_compile_is_optional_and_off_by_default(template):
    param = template["Parameters"]["ArmCompile"]
    assert (param["Default"], sorted(param["AllowedValues"])) == ("false", ["false", "true"])
    assert template["Conditions"]["UseArmCompile"] == {
        "Equals": [{"Ref": "ArmCompile"}, "true"]}
    res = template["Resources"]
    conditional = {name for name, r in res.items() if r.get("Condition") == "UseArmCompile"}
    assert conditional == {"CompileArmQueue", "CompileArmFunction"}
    outputs = {name for name, o in template["Outputs"].items()
               if o.get("Condition") == "UseArmCompile"}
    assert outputs == {"CompileArmQueueUrl", "CompileArmFunctionArn"}


def test_arm_queue_is_the_compile_queue_with_another_name(template):
    res = template["Resources"]
    main, arm = res["CompileQueue"]["Properties"], res["CompileArmQueue"]["Properties"]
    assert arm["QueueName"] == {"Sub": "${ResourcePrefix}-compile-arm64"}
    # same visibility timeout, retention, encryption and DLQ (whose alarm covers both)
    assert {k: v for k, v in arm.items() if k != "QueueName"} == {
        k: v for k, v in main.items() if k != "QueueName"}
    assert arm["RedrivePolicy"]["deadLetterTargetArn"] == {"GetAtt": "CompileDeadLetterQueue.Arn"}


def test_arm_compile_function_is_the_compile_function_on_arm64(template):
    """Everything but the architecture, the queue, the image tag, the placeholder ImageUri and
    the description is CompileFunction's: same image definition, handler (the Dockerfile's CMD),
    environment, policies, memory, timeout and event source settings."""
    res = template["Resources"]
    main, arm = copy.deepcopy(res["CompileFunction"]), copy.deepcopy(res["CompileArmFunction"])
    assert arm.pop("Condition") == "UseArmCompile"
    assert arm["Properties"].pop("Architectures") == ["arm64"]
    assert main["Properties"].pop("Architectures") == ["x86_64"]
    event = arm["Properties"]["Events"]["CompileRequested"]["Properties"]
    assert event.pop("Queue") == {"GetAtt": "CompileArmQueue.Arn"}
    del main["Properties"]["Events"]["CompileRequested"]["Properties"]["Queue"]
    assert arm["Metadata"].pop("DockerTag") != main["Metadata"].pop("DockerTag")
    # a placeholder that `sam build` replaces; kept only by `sam build --exclude
    # CompileArmFunction` (ArmCompile=false), and an intrinsic, so `sam deploy` uploads nothing
    assert "not-built" in arm["Properties"].pop("ImageUri")["Sub"]
    del arm["Properties"]["Description"], main["Properties"]["Description"]
    assert arm == main


def test_ingest_knows_the_arm_queue_only_when_it_exists(template):
    ingest = template["Resources"]["IngestFunction"]["Properties"]
    assert ingest["Environment"]["Variables"]["EDGEFORGE_ARM_COMPILE_QUEUE_URL"] == {
        "If": ["UseArmCompile", {"Ref": "CompileArmQueue"}, ""]}
    assert {"If": ["UseArmCompile",
                   {"SQSSendMessagePolicy": {"QueueName": {"GetAtt": "CompileArmQueue.QueueName"}}},
                   {"Ref": "AWS::NoValue"}]} in ingest["Policies"]


def test_sample_events_parse():
    names = sorted(p.name for p in EVENTS.glob("*.json"))
    assert {"ingest-s3-put.json", "ingest-sqs-s3-put.json", "ingest-s3-test-event.json",
            "compile-sqs.json"} <= set(names)
    for name in names:
        json.loads((EVENTS / name).read_text("utf-8"))
    [put] = parse_s3_notifications(json.loads((EVENTS / "ingest-s3-put.json").read_text()))
    [wrapped] = parse_s3_notifications(json.loads((EVENTS / "ingest-sqs-s3-put.json").read_text()))
    assert put == wrapped and put.key == "models/tiny/tiny.onnx"
    [uni] = parse_s3_notifications(json.loads((EVENTS / "ingest-s3-put-unicode.json").read_text()))
    assert uni.key == "models/my model/modèle v2.onnx"
    assert parse_s3_notifications(
        json.loads((EVENTS / "ingest-s3-test-event.json").read_text())) == []
