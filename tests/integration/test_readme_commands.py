"""The README's commands, run as a newcomer runs them: each is read from the page, byte for
byte, and given to `bash -c` as written.

- The first command (set up and run the demo) runs in a fresh copy of the source tree, with no
  network: the copy's `.venv` is created beforehand and sees this environment's packages (see
  `offline_checkout`), and pip is told, through its environment, to use no index and no build
  isolation. Nothing answers at `QUORUM_REDIS_URL` and no LLM is configured, so the demo starts
  its own Redis, the simulator and a worker; it must end every run SUCCESSFUL, exit 0 and leave
  nothing running.
- The second command (run the tests) is the one CI runs, literally (`.ci/run` ends with it).
  It is not run here: that would run this suite inside itself. Only that CI runs it is checked.
- Every command of the README and of docs/cli.md that starts one of Quorum's processes (the
  worker as `celery -A quorum.worker.app worker` and as `quorum worker`, the simulator, the
  API, their options passed through) is started as written, against a Redis of its own and the
  session's simulator, checked to answer (a run succeeds on the worker, GET /v1/models on the
  simulator, GET /healthz on the API) and stopped, leaving no process behind.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import re
import shlex
import signal
import site
import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from quorum import SingleShotValidationConfig
from quorum.producer import TaskClient
from quorum.producer.stack import ManagedProcess, free_port, redis_answers
from tests.integration.conftest import DedicatedStack, worker_env
from tests.integration.helpers import (
    APPLES,
    ROOT,
    TEMPLATE,
    Purchase,
    Simulator,
    copy_source,
    directive,
)
from tests.integration.services import http, poll

pytestmark = pytest.mark.integration

README = ROOT / "README.md"
CLI_PAGE = ROOT / "docs" / "cli.md"

DEMO_TIMEOUT_S = 300
"""The first command on a loaded 2-core machine. On a quiet one it takes about 15 s: 6 s for
the virtualenv and the editable install, 9 s for the demo (its stack started, four runs and a
workflow, its stack stopped)."""


def _section(page: Path, heading: str) -> str:
    """The text of the `## heading` section of `page`."""
    found = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", page.read_text(), re.M | re.S)
    assert found is not None, f"{page.name} has no section {heading!r}"
    return found.group(1)


def _bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S)


def readme_command(number: int) -> str:
    """The README's command `number`, the line under its `# number.` comment in "The two
    commands"."""
    (block,) = _bash_blocks(_section(README, "The two commands"))
    lines = block.splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.startswith(f"# {number}.")]
    return lines[at + 1]


# -- 1. set up and run the demo --------------------------------------------------------------


def _python3(bin_dir: Path) -> None:
    """`python3` in `bin_dir`: the interpreter this environment was made from, so that the
    command's virtualenv can use this environment's packages (built for this Python)."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    interpreter = Path(sys.base_prefix) / "bin" / version
    assert interpreter.exists(), interpreter
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(interpreter)


def _run_checked(*command: str | Path, cwd: Path, env: dict[str, str]) -> None:
    done = subprocess.run(
        [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"


def _dependency_scripts(bin_dir: Path) -> None:
    """The commands of this environment's packages (`celery`, …), written into `bin_dir` as
    pip writes them when it installs a package there; the demo starts `celery` beside its
    Python. The project's own `quorum` is left to the install under test."""
    python = bin_dir / "python"
    for entry in importlib.metadata.entry_points(group="console_scripts"):
        script = bin_dir / entry.name
        if entry.dist is None or entry.dist.name in ("quorum-celery", "pip") or script.exists():
            continue
        script.write_text(
            f"#!{python}\nimport sys\nfrom importlib.metadata import EntryPoint\n\n"
            f"sys.exit(EntryPoint({entry.name!r}, {entry.value!r}, {entry.group!r}).load()())\n"
        )
        script.chmod(0o755)


def offline_checkout(base: Path) -> tuple[Path, dict[str, str]]:
    """A fresh copy of the source tree that the first command sets up without the network,
    and the environment to run it in.

    The copy's `.venv` exists already, made by `python3 -m venv` as the command makes it (the
    command's own `python3 -m venv .venv` then finds it and keeps what it holds), with:
    - a `.pth` path line to this environment's site-packages, so that every dependency is
      installed already (a path line does not run that folder's own `.pth` hooks: this
      environment's editable install of the repository stays out);
    - the commands of those dependencies in `.venv/bin`, as pip would have written them;
    - no setuptools of its own: Python 3.11's venv brings setuptools 65, older than the
      project's build requirement (setuptools>=69), and a build without isolation would use
      it; this environment's (the dev extra's) is used instead.
    pip reads no configuration file and no index (`PIP_NO_INDEX=1`), and builds without
    isolation, which would fetch setuptools: `PIP_NO_BUILD_ISOLATION=0`. The value is the
    inverse of the name on purpose: pip turns `PIP_<OPTION>` into the default of the option's
    destination, and `--no-build-isolation` stores False into `build_isolation`
    (pip/_internal/cli/parser.py, cmdoptions.py; pypa/pip#5735), so 0 disables isolation and
    1 keeps it.
    """
    source = copy_source(base / "quorum")
    shim = base / "bin"
    _python3(shim)
    ours = Path(sys.executable).parent  # this environment's commands stay out of reach
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if Path(p) != ours]
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("QUORUM_", "OPENAI_", "PIP_", "PYTHON", "VIRTUAL_ENV"))
    }
    env |= {"PATH": os.pathsep.join([str(shim), *path]), "PYTHONUNBUFFERED": "1"}
    venv = source / ".venv"
    _run_checked(shim / "python3", "-m", "venv", venv, cwd=source, env=env)
    python = venv / "bin" / "python"
    _run_checked(python, "-m", "pip", "uninstall", "-y", "-q", "setuptools", cwd=source, env=env)
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    site_dirs = [*site.getsitepackages(), site.getusersitepackages()]
    (Path(purelib) / "dependencies.pth").write_text("\n".join(site_dirs) + "\n")
    _dependency_scripts(venv / "bin")
    env |= {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_NO_BUILD_ISOLATION": "0",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_INPUT": "1",
    }
    return source, env


def _processes_naming(*needles: str) -> dict[int, str]:
    """This machine's processes whose command line contains any of `needles`, by pid."""
    found = {}
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            line = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if any(needle in line for needle in needles):
                found[int(cmdline.parent.name)] = line
    return found


def assert_none_left(*needles: str, within_s: float = 5.0) -> None:
    """No process names any of `needles` within `within_s`; those left are killed, and named
    in the failure."""
    deadline = time.monotonic() + within_s
    while (left := _processes_naming(*needles)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"left running: {left}"


def _run_to_the_end(command: str, *, cwd: Path, env: dict[str, str]) -> tuple[int, str]:
    """`bash -c command`, its output, its exit status; killed with all it started if it
    outlives DEMO_TIMEOUT_S."""
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = process.communicate(timeout=DEMO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        out, _ = process.communicate()
        pytest.fail(f"{command!r} still running after {DEMO_TIMEOUT_S}s:\n{out[-6000:]}")
    return process.returncode, out


@pytest.mark.timeout(DEMO_TIMEOUT_S + 120)
def test_the_first_command_sets_up_and_runs_the_demo(tmp_path: Path) -> None:
    command = readme_command(1)
    assert command.endswith("quorum demo"), command
    source, env = offline_checkout(tmp_path)
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"
    env["QUORUM_REDIS_URL"] = nothing_there  # nothing answers: the demo starts its own Redis

    started = time.monotonic()
    status, out = _run_to_the_end(command, cwd=source, env=env)
    seconds = time.monotonic() - started

    tail = f"after {seconds:.0f}s:\n{out[-6000:]}"
    assert status == 0, f"exit {status} {tail}"
    redis_url = re.search(r"^Redis: (redis://\S+)$", out, re.M)
    assert redis_url is not None and redis_url.group(1) != nothing_there, tail
    assert re.search(r"^LLM: simulator at http://\S+/v1", out, re.M), tail
    assert "Worker: started" in out, tail
    summary = re.search(r"^(\d+) of (\d+) runs validated, 0 timed out;", out, re.M)
    assert summary is not None, tail
    validated, runs = int(summary.group(1)), int(summary.group(2))
    assert validated == runs >= 4, tail  # a run per voting mode and a defined task
    assert len(re.findall(r"^-> .*\(SUCCESSFUL in [\d.]+s\)$", out, re.M)) == runs, tail
    assert "workflow_finished: SUCCESSFUL" in out, tail
    assert out.rstrip().endswith("Stopping the local stack."), tail

    # The demo ran the copy's own code, installed by the command.
    shown = subprocess.run(
        [source / ".venv" / "bin" / "python", "-c", "import quorum; print(quorum.__file__)"],
        cwd=tmp_path / "bin",  # not beside the copy, which Python would import from
        env=env,
        capture_output=True,
        text=True,
    )
    assert Path(shown.stdout.strip()).is_relative_to(source), shown
    # Nothing it started is left: no process of the copy (worker, simulator), no Redis.
    port = redis_url.group(1).rsplit(":", 1)[1].split("/")[0]
    assert_none_left(str(source), f"127.0.0.1:{port}", f"--port {port}")
    assert not redis_answers(redis_url.group(1))


def test_the_second_command_is_the_one_ci_runs() -> None:
    """Not run here, which would run this suite inside itself: CI runs it as written."""
    command = readme_command(2)
    assert command.endswith(".venv/bin/pytest"), command
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip()]
    assert ci[-1] == command


# -- 2. the commands that start Quorum's processes -----------------------------------------


@dataclass(frozen=True)
class Shown:
    """A command a page shows that starts one of Quorum's processes."""

    page: str
    command: str
    exports: dict[str, str] = field(default_factory=dict)
    """What the page's block exports before the command."""

    @property
    def name(self) -> str:
        """The page and the command, without its comment."""
        return f"{self.page}: {self.command.split('#')[0].strip()}"

    @property
    def kind(self) -> str:
        if re.match(r"(celery -A quorum\.worker\.app|quorum) worker\b", self.command):
            return "worker"
        if self.command.startswith("quorum sim"):
            return "sim"
        assert self.command.startswith("quorum api"), self.command
        return "api"


def _starts_a_process(line: str) -> bool:
    return bool(re.match(r"(celery -A quorum\.worker\.app worker|quorum (worker|sim|api))\b", line))


def _exports(block: str) -> dict[str, str]:
    exported = {}
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["export"]:
            exported |= dict(word.split("=", 1) for word in words[1:])
    return exported


def shown_commands() -> list[Shown]:
    """Every command of README.md's "Run it for real" and of docs/cli.md's shell blocks that
    starts a worker, the simulator or the API, and each `# or: …` form given beside one."""
    blocks = [("README", block) for block in _bash_blocks(_section(README, "Run it for real"))]
    blocks += [("cli.md", block) for block in _bash_blocks(CLI_PAGE.read_text())]
    shown = []
    for page, block in blocks:
        exports = _exports(block)
        for line in block.splitlines():
            if _starts_a_process(line):
                shown.append(Shown(page, line, exports))
                shown += [
                    Shown(page, alternative.strip(), exports)
                    for alternative in re.findall(r"# or: ([^;]+)", line)
                ]
    return shown


SHOWN = shown_commands()


def test_the_pages_show_each_process_and_the_pass_through() -> None:
    commands = [shown.command.split("#")[0].strip() for shown in SHOWN]
    assert "celery -A quorum.worker.app worker" in commands
    assert "quorum worker" in commands
    assert {"quorum worker --loglevel INFO", "quorum sim --port 18000 --seed 1"} <= set(commands)
    assert {shown.kind for shown in SHOWN} == {"worker", "sim", "api"}


def _environment(shown: Shown, redis_url: str, simulator: Simulator) -> dict[str, str]:
    """What the command runs with: the block's exports, with the Redis, the LLM server and
    its key (fixed local addresses and a placeholder on the page) pointing at the test's; the
    commands of this environment first on the PATH, as in an activated virtualenv."""
    env = {**shown.exports, **worker_env(redis_url, simulator)}
    if shown.exports:
        assert {"QUORUM_REDIS_URL", "OPENAI_BASE_URL", "OPENAI_API_KEY"} <= shown.exports.keys()
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return env


@contextlib.contextmanager
def started(command: str, env: dict[str, str], cwd: Path) -> Iterator[ManagedProcess]:
    """`bash -c command` in a session of its own; stopped afterwards, and checked that
    nothing of its session is left."""
    process = ManagedProcess(command.split()[0], ["bash", "-c", command], env=env, cwd=cwd)
    try:
        yield process
    finally:
        process.stop(timeout_s=20)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"{command!r} left processes running:\n{process.output()}")


def _free_port_for(command: str) -> tuple[str, int]:
    """`command` with its `--port N` on a free port: the page's port may be taken on this
    machine (only the number is changed)."""
    port = free_port()
    changed, count = re.subn(r"(--port )\d+", rf"\g<1>{port}", command)
    assert count == 1, command
    return changed, port


def _check_worker(process: ManagedProcess, command: str, stack: DedicatedStack, scope: str) -> None:
    with TaskClient(redis_url=stack.redis_url) as client:
        run = client.submit(
            template=TEMPLATE,
            response_model=Purchase,
            kwargs={"sim": directive(scope, outputs=[APPLES], votes={"*": True})},
            config=SingleShotValidationConfig(issues=["The quantity is a number of items"]),
        )
        assert run.result(timeout=90) == Purchase(**APPLES), process.output()
    if "--loglevel INFO" in command:  # passed through: Celery says it is ready at INFO only
        poll(
            lambda: any(re.search(r"@\S+ ready\.", line) for line in process.lines),
            timeout_s=10,
            what=f"the ready line of {command!r}",
        )


@pytest.mark.parametrize("shown", SHOWN, ids=lambda shown: shown.name)
def test_each_command_that_starts_a_process_runs_as_written(
    shown: Shown, dedicated_stack: DedicatedStack, scope: str, tmp_path: Path
) -> None:
    env = _environment(shown, dedicated_stack.redis_url, dedicated_stack.simulator)
    command = shown.command
    if shown.kind == "worker":
        with started(command, env, tmp_path) as process:
            _check_worker(process, command, dedicated_stack, scope)
        return
    command, port = _free_port_for(command)
    path = "/v1/models" if shown.kind == "sim" else "/healthz"
    with started(command, env, tmp_path) as process:

        def answers() -> Any:
            with contextlib.suppress(OSError):
                reply = http("GET", f"http://127.0.0.1:{port}{path}", timeout_s=5)
                return reply.status == 200 and reply
            assert process.process.poll() is None, process.output()
            return None

        reply = poll(answers, timeout_s=60, what=f"GET {path} from {command!r}")
        if shown.kind == "sim":
            assert reply.json()["data"][0]["object"] == "model"
