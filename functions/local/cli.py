"""``edgeforge dev …`` and ``edgeforge demo``: the local embedded stack from the command line.

``compiler/cli.py`` hands these two commands, with their arguments, to :func:`main`. Each
subcommand turns its arguments into one call of :mod:`functions.local` and prints the result.
Also runnable as ``python -m functions.local.cli`` (``dev up --detach`` starts itself so).

Exit status: 0 success, 1 failure (a profile failed, the stack is not running for ``status``),
2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .stack import LocalStack, StackInfo, StackOptions, running_stack, stop_running_stack
from .template import LocalStackError

__all__ = ["build_parser", "main"]

DEFAULT_STATE_DIR = ".cache/devstack"


class _Shutdown(BaseException):
    """SIGTERM / SIGHUP: stop like Ctrl-C does."""


def _on_signal(signum: int, frame: Any) -> None:
    raise _Shutdown(signum)


def _parameters(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        name, sep, setting = value.partition("=")
        if not sep or not name:
            raise LocalStackError(f"--parameter {value!r}: expected NAME=VALUE")
        out[name] = setting
    return out


def _stack_options(args: argparse.Namespace, port: int) -> StackOptions:
    kwargs: dict[str, Any] = {"state_dir": Path(args.state_dir), "port": port,
                              "parameters": _parameters(args.parameter),
                              "max_concurrency": args.max_concurrency,
                              "retry_delay_s": args.retry_delay}
    if args.template:
        kwargs["template"] = Path(args.template)
    return StackOptions(**kwargs)


# --------------------------------------------------------------------------------------------
# printing
# --------------------------------------------------------------------------------------------


def _exports(info: StackInfo) -> str:
    return "\n".join(f"export {k}={v}" for k, v in info.client_env().items())


def _print_info(info: StackInfo, state_dir: str) -> None:
    outputs = info.outputs
    models = outputs.get("ModelsBucketName", "<models bucket>")
    print(f"edgeforge local stack: {info.status} at {info.endpoint} (pid {info.pid}, "
          f"listening on 127.0.0.1 only)")
    print(f"  template  {info.template} (stack {info.stack_name}, account {info.account}, "
          f"{info.region})")
    for fn in info.functions.values():
        print(f"  function  {fn.logical_id}: {fn.handler} ← {fn.event_source}, batch "
              f"{fn.batch_size}, {fn.concurrency} worker(s), log {fn.log}")
    for name, value in outputs.items():
        print(f"  output    {name} = {value}")
    if info.not_emulated:
        print(f"  not emulated: {', '.join(info.not_emulated)}")
    print("\nUse it with boto3 or the AWS CLI (dummy credentials; nothing leaves 127.0.0.1):")
    print(_exports(info))
    print(f"  # or: aws --endpoint-url {info.endpoint} --region {info.region} …")
    print(f"  aws s3 cp model.onnx s3://{models}/models/mymodel/mymodel.onnx")
    print(f"  aws s3 cp s3://{models}/models/mymodel/mymodel.onnx.report.json -")
    if info.repository_url:
        print(f"\nDevice repository (anonymous HTTP): {info.repository_url}")
        print(f"  trusted key: {info.public_key_pem} (DER: {info.public_key_der})")
        print("  edgeforge_runtime.client.RepositoryClient(<repository>, [<trusted key>], "
              "'x86_64', '~/.cache/edgeforge').update('mymodel')")
    print(f"\nState and logs: {state_dir} (logs/<function>.log, logs/moto.log); "
          "stop: Ctrl-C in the foreground, or `edgeforge dev down`")


def _queues(info: StackInfo) -> dict[str, dict[str, int]]:
    sqs = info.client("sqs")
    out = {}
    for res in info.resources.values():
        if res["type"] != "AWS::SQS::Queue":
            continue
        attrs = sqs.get_queue_attributes(QueueUrl=res["ref"], AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        out[str(res["ref"]).rsplit("/", 1)[-1]] = {
            "visible": int(attrs.get("ApproximateNumberOfMessages", 0)),
            "in_flight": int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0))}
    return out


def _jobs(info: StackInfo, limit: int = 20) -> list[dict[str, Any]]:
    table = info.outputs.get("JobsTableName")
    if not table:
        return []
    items = info.client("dynamodb").scan(
        TableName=str(table), FilterExpression="#t = :job", ExpressionAttributeNames={
            "#t": "type"}, ExpressionAttributeValues={":job": {"S": "job"}}).get("Items", [])
    from boto3.dynamodb.types import TypeDeserializer

    de = TypeDeserializer()
    jobs = [{k: de.deserialize(v) for k, v in item.items()} for item in items]
    jobs.sort(key=lambda j: str(j.get("updated_at", "")), reverse=True)
    return [{k: (int(j[k]) if k in ("version", "attempts") and j.get(k) is not None
                 else j.get(k))
             for k in ("model", "version", "profile", "status", "attempts", "error_code",
                       "updated_at")} for j in jobs[:limit]]


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


def _cmd_up(args: argparse.Namespace) -> int:
    running = running_stack(Path(args.state_dir))
    if running is not None:
        print(f"a local stack is already running from {args.state_dir}; using it as it is")
        _print_info(running, args.state_dir)
        return 0
    if args.detach:
        return _detach(args)
    with LocalStack(_stack_options(args, args.port)) as stack:
        _print_info(stack.info, args.state_dir)
        print("\nrunning in the foreground; Ctrl-C stops it", flush=True)
        try:
            stack.wait()
        except (KeyboardInterrupt, _Shutdown):
            print("\nstopping the local stack…", flush=True)
    print("stopped")
    return 0


def _detach(args: argparse.Namespace) -> int:
    """Start ``dev up`` again as a background process of its own session; wait until ready."""
    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / "stack.log"
    cmd = [sys.executable, "-m", "functions.local.cli", "dev", "up", "--port", str(args.port),
           "--state-dir", str(state_dir), "--max-concurrency", str(args.max_concurrency),
           "--retry-delay", str(args.retry_delay)]
    if args.template:
        cmd += ["--template", str(Path(args.template).resolve())]
    for p in args.parameter:
        cmd += ["--parameter", p]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        info = running_stack(state_dir)
        if info is not None and info.pid == proc.pid and info.status == "running":
            _print_info(info, args.state_dir)
            return 0
        if proc.poll() is not None:
            print(f"edgeforge: error: the local stack did not start (exit status "
                  f"{proc.returncode}); {log_path}:", file=sys.stderr)
            print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
            return 1
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    print(f"edgeforge: error: the local stack did not start within {args.start_timeout:.0f} s; "
          f"see {log_path}", file=sys.stderr)
    return 1


def _cmd_down(args: argparse.Namespace) -> int:
    info = stop_running_stack(Path(args.state_dir), timeout_s=args.timeout)
    if info is None:
        print(f"no local stack is running from {args.state_dir}")
    else:
        print(f"stopped the local stack at {info.endpoint} (pid {info.pid})")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    info = running_stack(Path(args.state_dir))
    if info is None:
        if args.json:
            print(json.dumps({"status": "stopped", "state_dir": args.state_dir}))
        else:
            print(f"no local stack is running from {args.state_dir} (start one: edgeforge dev up)")
        return 1
    queues, jobs = _queues(info), _jobs(info)
    if args.json:
        print(json.dumps({**info.model_dump(mode="json"), "client_env": info.client_env(),
                          "queues": queues, "jobs": jobs}, indent=2))
        return 0
    _print_info(info, args.state_dir)
    print("\nworkers:")
    for fn, workers in info.workers.items():
        alive = sum(w["alive"] for w in workers)
        total = {k: sum(int(w[k]) for w in workers) for k in (
            "invocations", "records", "failed_records", "errors", "crashes", "timeouts")}
        print(f"  {fn:<16} {alive}/{len(workers)} alive, " + ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in total.items()))
    print("queues:")
    for name, depth in queues.items():
        print(f"  {name:<28} {depth['visible']} visible, {depth['in_flight']} in flight")
    if jobs:
        print("recent jobs:")
        for j in jobs:
            print(f"  {j['model']} v{j['version']} {j['profile']:<13} {j['status']:<8} "
                  f"attempts {j.get('attempts') or 0}"
                  + (f"  {j['error_code']}" if j.get("error_code") else ""))
    if info.failure:
        print(f"FAILED: {info.failure}")
        return 1
    return 0


def _cmd_env(args: argparse.Namespace) -> int:
    info = running_stack(Path(args.state_dir))
    if info is None:
        print(f"# no local stack is running from {args.state_dir}", file=sys.stderr)
        return 1
    print(_exports(info))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DEFAULT_PROFILES, DemoOptions, run_demo

    options = DemoOptions(model=Path(args.model) if args.model else None,
                          profiles=args.profile or list(DEFAULT_PROFILES),
                          stack=_stack_options(args, args.port), work_dir=Path(args.work_dir),
                          timeout_s=args.timeout)
    if options.model is not None and not options.model.is_file():
        raise FileNotFoundError(2, "no such file", str(options.model))
    return run_demo(options, out=lambda line: print(line, flush=True))


# --------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------


def _stack_arguments(p: argparse.ArgumentParser, default_port: int) -> None:
    p.add_argument("--port", type=int, default=default_port,
                   help=f"TCP port on 127.0.0.1 (default {default_port}; 0 = any free port)")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                   help=f"pid file, state.json, logs, the trusted key (default {DEFAULT_STATE_DIR})")
    p.add_argument("--template", help="the SAM template (default: the repository's template.yaml)")
    p.add_argument("--parameter", action="append", default=[], metavar="NAME=VALUE",
                   help="override a template parameter (repeatable)")
    p.add_argument("--max-concurrency", type=int, default=2,
                   help="most worker processes per function (default 2)")
    p.add_argument("--retry-delay", type=int, default=5, metavar="S",
                   help="seconds before a failed message is delivered again (default 5)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeforge", description="The local embedded stack: template.yaml on moto's "
        "server on 127.0.0.1, the Lambda handlers as local workers. No AWS account, no Docker.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="the whole flow once: up, upload, compile, device, down",
                       description="Start the local stack (or use the one running), upload a "
                       "sample CNN (or MODEL) to the models bucket, show each profile's compile, "
                       "then act as a device: pull this machine's artifact over HTTP without "
                       "credentials, verify it with the KMS public key and run it next to "
                       "onnxruntime; stop the stack.")
    p.add_argument("model", nargs="?", help="an .onnx file (default: a built-in sample CNN)")
    p.add_argument("-p", "--profile", action="append",
                   help="target profile (repeatable; default x86_64, rpi4, armv7, jetson-orin)")
    p.add_argument("--work-dir", default=".cache/demo",
                   help="the device's directory: trusted key and artifact cache")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the compiles")
    _stack_arguments(p, default_port=0)
    p.set_defaults(func=_cmd_demo)

    dev = sub.add_parser("dev", help="run the local stack",
                         description="Run the local stack: moto's server on 127.0.0.1 with the "
                         "resources of template.yaml, and the functions' handlers as workers.")
    dsub = dev.add_subparsers(dest="dev_command", required=True, metavar="SUBCOMMAND")
    p = dsub.add_parser("up", help="start it (foreground; --detach for the background)")
    _stack_arguments(p, default_port=5000)
    p.add_argument("-d", "--detach", action="store_true",
                   help="run in the background (pid file in the state dir); stop with `dev down`")
    p.add_argument("--start-timeout", type=float, default=180, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_up)
    p = dsub.add_parser("down", help="stop the running stack")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    p.add_argument("--timeout", type=float, default=60, help="seconds before killing it")
    p.set_defaults(func=_cmd_down)
    p = dsub.add_parser("status", help="endpoint, resources, workers, queues, recent jobs")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_status)
    p = dsub.add_parser("env", help="print `export …` lines for boto3 / the AWS CLI")
    p.add_argument("--state-dir", default=DEFAULT_STATE_DIR)
    p.set_defaults(func=_cmd_env)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    for s in previous:
        signal.signal(s, _on_signal)
    # Ctrl-C as KeyboardInterrupt even where a shell started us with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return int(args.func(args))
    except (KeyboardInterrupt, _Shutdown):
        print("edgeforge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `edgeforge dev status | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except FileNotFoundError as e:
        print(f"edgeforge: error: {e.filename}: no such file", file=sys.stderr)
        return 2
    except LocalStackError as e:
        print(f"edgeforge: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the compiler's errors (an unknown profile…) and the like
        from compiler.exceptions import EdgeforgeError

        if isinstance(e, EdgeforgeError):
            print(f"edgeforge: error: {e}", file=sys.stderr)
            return 2
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
