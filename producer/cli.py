"""The `quorum` command (Typer + Rich): submit, runs, tasks, status, watch, result, provenance,
cancel; worker, api, sim (their options passed through); llm serve, demo, bench; workflow.

Every read command has `--json` (machine-readable output on stdout); `watch` and
`submit --wait` redraw a live view of the attempts, the votes arriving per issue, each issue's
margin and the decision (on stderr for `submit`, whose stdout stays the id and the result). An
error is one line on stderr, `quorum: …`, with a non-zero exit: 2 for a refused request or an
unreachable Redis (said within about 2 s), 1 for a run that ended without a result.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from quorum.producer.client import TaskClient, TaskRun
from quorum.producer.runview import age, run_page
from quorum.producer.terminal import run_tree, show_live
from quorum.producer.workflow_cli import workflow_app
from quorum.shared.connection import probe
from quorum.shared.errors import QuorumError, TaskFailedError
from quorum.shared.models import TaskStatus
from quorum.shared.settings import get_settings

__all__ = ["app", "main"]

PROBE_TIMEOUT_S = 1.5
"""How long the command waits for Redis to answer before saying it does not."""

app = typer.Typer(
    name="quorum",
    help=__doc__.split("\n\n")[0] if __doc__ else None,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
llm_app = typer.Typer(help="A real model on this machine (needs quorum-celery[local]).")
app.add_typer(llm_app, name="llm")
app.add_typer(workflow_app, name="workflow")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a view.")]
RunId = Annotated[str, typer.Argument(help="The run's id.", show_default=False)]
PASS_THROUGH = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}


class Llm(StrEnum):
    """Which LLM the demo calls."""

    sim = "sim"
    local = "local"


def _client() -> TaskClient:
    """A client on the configured Redis, once Redis has answered (else a one-line error)."""
    settings = get_settings()
    probe(settings.redis_url, tls=settings.redis_tls, timeout_s=PROBE_TIMEOUT_S)
    return TaskClient(settings=settings)


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2), flush=True)


def _json_arg(name: str, text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint=name) from None


def _state_json(run: TaskRun) -> dict[str, Any]:
    state = run.state()
    return {
        "id": run.id,
        "status": state.status.value,
        "attempt": state.attempt,
        "task": state.spec.task,
        "result": state.result,
        "error": state.error,
        "code": state.code,
        "reasons": state.reasons,
        "usage": state.usage.model_dump(),
        "created_at": state.created_at,
        "updated_at": state.updated_at,
    }


def _finish(run: TaskRun, timeout: float | None, as_json: bool) -> None:
    """Print the run's result on stdout, or exit 1 with why there is none."""
    try:
        result = run.result(timeout=timeout)
    except TaskFailedError as exc:
        if as_json:
            _print_json(_state_json(run))
        err.print(f"quorum: {exc}", markup=False)
        for reason in exc.reasons:
            err.print(f"- {reason}", markup=False)
        raise typer.Exit(1) from None
    if as_json:
        _print_json(_state_json(run))
    else:
        _print_json(result.model_dump(mode="json") if hasattr(result, "model_dump") else result)


@app.command()
def submit(
    task: Annotated[
        str | None, typer.Option(help="A defined task's name (`quorum tasks`).")
    ] = None,
    template: Annotated[str | None, typer.Option(help="Jinja template of the prompt.")] = None,
    template_file: Annotated[
        Path | None, typer.Option(help="A file holding the template.", dir_okay=False)
    ] = None,
    schema: Annotated[Path | None, typer.Option(help="A file holding the JSON Schema.")] = None,
    kwargs: Annotated[str, typer.Option(help="Template variables as JSON.")] = "{}",
    config: Annotated[
        str | None, typer.Option(help='e.g. {"mode": "threshold", "issues": [...]}; none: no votes')
    ] = None,
    checks: Annotated[str, typer.Option(help='[{"expr": ..., "message": ...}]')] = "[]",
    metadata: Annotated[str | None, typer.Option(help="JSON object kept with the run.")] = None,
    model: Annotated[str | None, typer.Option(help="Task model.")] = None,
    validator_model: Annotated[str | None, typer.Option(help="Validator model.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Task calls' temperature.")] = None,
    max_output_tokens: Annotated[int | None, typer.Option(help="Task calls' output cap.")] = None,
    system: Annotated[str | None, typer.Option(help="System prompt of the task calls.")] = None,
    idempotency_key: Annotated[str | None, typer.Option(help="Run once per key.")] = None,
    callback_url: Annotated[
        str | None, typer.Option(help="POSTed the run's final view, signed, at its end.")
    ] = None,
    timeout_s: Annotated[float | None, typer.Option(help="The run's deadline (s).")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Token budget of the run.")] = None,
    max_cost: Annotated[float | None, typer.Option(help="Cost budget of the run (USD).")] = None,
    wait: Annotated[bool, typer.Option(help="Show the run live, then print its result.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait (--wait).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Submit a defined task (--task) or an ad-hoc one (--template or --template-file)."""
    if template_file is not None:
        if template is not None:
            raise typer.BadParameter("give --template or --template-file, not both")
        template = template_file.read_text()
    parsed = {
        name: _json_arg(f"--{name}", text)
        for name, text in (
            ("kwargs", kwargs),
            ("config", config),
            ("checks", checks),
            ("metadata", metadata),
        )
    }
    run = _client().submit(
        task=task,
        template=template,
        response_model=json.loads(schema.read_text()) if schema else None,
        **parsed,
        model=model,
        validator_model=validator_model,
        temperature=temperature,
        max_output_tokens=max_output_tokens,
        system=system,
        idempotency_key=idempotency_key,
        callback_url=callback_url,
        timeout_s=timeout_s,
        max_tokens=max_tokens,
        max_cost=max_cost,
    )
    if not as_json:
        print(run.id, flush=True)
    if wait:
        show_live(run, err, timeout)
        _finish(run, timeout=1 if timeout is None else timeout, as_json=as_json)
    elif as_json:
        _print_json({"id": run.id, "status": run.status().value})


@app.command()
def runs(
    status: Annotated[
        TaskStatus | None, typer.Option(case_sensitive=False, help="Only runs in this status.")
    ] = None,
    task: Annotated[str | None, typer.Option(help="Only runs of this defined task.")] = None,
    metadata: Annotated[
        list[str] | None, typer.Option(metavar="KEY=VALUE", help="Metadata value (repeatable).")
    ] = None,
    created_after: Annotated[float | None, typer.Option(help="Epoch seconds.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (1 to 1000).")] = 50,
    cursor: Annotated[str | None, typer.Option(help="Continue a listing.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List runs, newest first (filters: AND); a full page says how to go on."""
    pairs = dict(pair.partition("=")[::2] for pair in metadata or [])
    page = _client().list(
        status=status,
        task=task,
        metadata=pairs,
        created_after=created_after,
        limit=limit,
        cursor=cursor,
    )
    if as_json:
        listed = [run.model_dump(mode="json") for run in page]
        _print_json({"runs": listed, "next_cursor": page.next_cursor})
        return
    table = Table(box=None)
    table.add_column("run", no_wrap=True, min_width=32)  # ids whole, to copy
    for column in ("status", "task", "age", "attempts", "code"):
        table.add_column(column, justify="right" if column in ("age", "attempts") else "left")
    now = time.time()
    for run in page:
        table.add_row(
            run.id,
            run.status.value,
            run.task or "ad hoc",
            age(now - run.created_at),
            str(run.attempt),
            run.code,
        )
    out.print(table if len(page) else "no runs")
    if page.next_cursor:
        err.print(f"more: --cursor {page.next_cursor}", markup=False)


@app.command()
def tasks(as_json: JsonFlag = False) -> None:
    """List the defined tasks the workers published."""
    published = _client().tasks()
    if as_json:
        _print_json(published)
        return
    for name, entry in published.items():
        votes = (entry["config"] or {}).get("mode", "no votes")
        variables = ", ".join(entry["variables"]) or "-"
        print(f"{name}  [{votes}]  kwargs: {variables}  hash {entry['hash']}")
    if not published:
        print("no defined tasks published (start a worker with QUORUM_IMPORTS)")


@app.command()
def status(run_id: RunId, as_json: JsonFlag = False) -> None:
    """Print a run's status."""
    run = _client().get(run_id)
    if as_json:
        _print_json(_state_json(run))
    else:
        print(run.status().value)


@app.command()
def watch(
    run_id: RunId,
    timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Follow a run live until it ends (--json: one event per line, as they happen)."""
    run = _client().get(run_id)
    if as_json:
        for event in run.watch(timeout=timeout):
            print(event.model_dump_json(), flush=True)
    else:
        show_live(run, out, timeout)


@app.command()
def result(
    run_id: RunId,
    timeout: Annotated[float | None, typer.Option(help="Seconds to wait.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Wait for a run and print its result."""
    _finish(_client().get(run_id), timeout, as_json)


@app.command()
def provenance(run_id: RunId, as_json: JsonFlag = False) -> None:
    """Print a run's provenance as a tree: attempts, outputs, checks, issues, votes."""
    run = _client().get(run_id)
    events = run.provenance()
    if as_json:
        _print_json([event.model_dump(mode="json") for event in events])
    else:
        out.print(run_tree(run_page(run.state(), events)))


@app.command()
def cancel(run_id: RunId, as_json: JsonFlag = False) -> None:
    """Cancel a run."""
    run = _client().get(run_id)
    cancelled = run.cancel()
    if as_json:
        _print_json({"id": run_id, "cancelled": cancelled, "status": run.status().value})
    else:
        print("cancelled" if cancelled else "already ended")


@app.command(**PASS_THROUGH)  # type: ignore[arg-type]
def worker(ctx: typer.Context) -> None:
    """Start a worker: celery -A quorum.worker.app worker [CELERY OPTIONS]."""
    from quorum.producer.stack import celery_command

    command = [*celery_command(), *ctx.args]
    os.execvp(command[0], command)  # replaces this process: returns only where mocked


@app.command(**PASS_THROUGH)  # type: ignore[arg-type]
def api(ctx: typer.Context) -> None:
    """Serve the HTTP API, /metrics and /ui (quorum-celery[api]): uvicorn [UVICORN OPTIONS],
    on 127.0.0.1:8080 unless --host / --port say otherwise."""
    factory = ["--factory", "quorum.producer.api:main_app"]
    command = [sys.executable, "-m", "uvicorn", *factory, "--host", "127.0.0.1", "--port", "8080"]
    os.execvp(command[0], [*command, *ctx.args])  # the last --host / --port given wins


@app.command(**PASS_THROUGH)  # type: ignore[arg-type]
def sim(ctx: typer.Context) -> None:
    """Start the OpenAI-compatible LLM simulator [SIMULATOR OPTIONS] (--help lists them)."""
    from quorum.simulator.server import main as sim_main

    sim_main(list(ctx.args))


def _local_extra_missing() -> bool:
    from quorum.producer.localllm import INSTALL_HINT, missing_packages

    absent = missing_packages()
    if absent:
        err.print(f"quorum: {', '.join(absent)} not installed: {INSTALL_HINT}", markup=False)
    return bool(absent)


@llm_app.command("serve")
def llm_serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Default: a free port.")] = None,
) -> None:
    """Serve SmolLM2-135M-Instruct, OpenAI-compatible."""
    from quorum.producer.localllm import start_local_llm, worker_env

    if _local_extra_missing():
        raise typer.Exit(2)
    base_url, server = start_local_llm(host=host, port=port)
    # Stop the server on SIGTERM too (`docker stop`, where this is process 1), not only Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    print(f"local model serving at {base_url}; point workers at it with:", flush=True)
    for name, value in worker_env(base_url).items():
        print(f"  export {name}={value}", flush=True)
    try:
        raise typer.Exit(server.process.wait())
    finally:
        server.stop()


def _seconds(text: str) -> float:
    """A positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 1e9:
        raise typer.BadParameter(f"a positive number of seconds, got {text!r}")
    return value


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 7,
    llm: Annotated[
        Llm,
        typer.Option(
            help="sim: the simulator (or the server OPENAI_BASE_URL / OPENAI_API_KEY name); "
            "local: a real small model served here (needs quorum-celery[local])"
        ),
    ] = Llm.sim,
    deadline: Annotated[
        float | None,
        typer.Option(
            parser=_seconds,
            metavar="SECONDS",
            help="Each run's deadline (timeout_s at submit; default 60, local 120): a run "
            "that reaches it is reported as timed out and cancelled, and the demo goes on.",
        ),
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="local: each message in each voting mode.")
    ] = False,
) -> None:
    """Run the demo on a local stack."""
    from quorum.producer.demo import run_demo

    if llm is Llm.local and _local_extra_missing():
        raise typer.Exit(2)
    code = run_demo(get_settings(), seed=seed, llm=llm.value, deadline_s=deadline, every=every)
    raise typer.Exit(code)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="A seconds-long smoke run.")] = False,
    out_dir: Annotated[str, typer.Option("--out", help="Folder of the report.")] = "docs",
) -> None:
    """Benchmark Quorum against py-ai-toolkit (quorum-celery[bench])."""
    from quorum.bench.runner import run_bench

    command = "quorum bench" + (" --quick" if quick else "") + f" --out {out_dir}"
    raise typer.Exit(run_bench(quick=quick, out=Path(out_dir), command=command))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `quorum` command: its exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        code = typer.main.get_command(app).main(args, prog_name="quorum", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.TyperException as exc:  # a usage error: one line
        err.print(f"quorum: {exc.format_message()}", markup=False)
        return 2
    except (QuorumError, ValueError, OSError) as exc:
        err.print(f"quorum: {exc}", markup=False)
        return 2
    except (KeyboardInterrupt, typer.Abort):
        return 130
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
