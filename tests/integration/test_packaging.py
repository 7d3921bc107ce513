"""The wheel, installed as a user installs it: into a fresh virtualenv, next to a service that
has its own `shared`, `worker` and `producer` packages (a common layout, which Quorum's
top-level folders of the same names must not shadow).

Nothing is fetched: the wheel is built with this environment's setuptools (the dev extra),
installed without its dependencies, and the virtualenv sees this environment's packages for
those (through a `.pth` path line, which does not run this environment's own `.pth` hooks, so
the editable install of the repository stays out of it).
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.integration.helpers import copy_source

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

# The producer-facing API a user imports (README, docs).
PUBLIC = [
    "TaskClient",
    "AsyncTaskClient",
    "TaskStatus",
    "SingleShotValidationConfig",
    "ThresholdVotingValidationConfig",
    "KAheadVotingValidationConfig",
    "TaskFailedError",
    "RunTimeoutError",
]

SERVICE = {
    "shared/__init__.py": "",
    "shared/broker.py": "BROKER = 'the service broker'\n",
    "worker/__init__.py": "from shared.broker import BROKER\n",
    "producer/__init__.py": "from shared.broker import BROKER\n\nNAME = 'the service producer'\n",
    "main.py": f"""
        import json
        import sys

        import producer
        import shared.broker
        import worker
        from quorum import {", ".join(PUBLIC)}

        import quorum
        import quorum.producer.cli
        import quorum.shared.broker
        import quorum.simulator
        import quorum.worker.app
        from quorum.shared.scripts import lua

        assert producer.BROKER == worker.BROKER == "the service broker"
        assert quorum.shared.broker is not shared.broker
        missing = [name for name in quorum.__all__ if not hasattr(quorum, name)]
        assert not missing, missing
        modules = ("shared", "worker", "producer", "quorum", "quorum.shared", "quorum.worker",
                   "quorum.producer", "quorum.simulator")
        print(json.dumps({{
            "files": {{name: sys.modules[name].__file__ for name in modules}},
            "take.lua": len(lua("take")),
        }}))
    """,
}


def _run(*command: str | Path, cwd: Path, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built offline from a copy of the source (links kept, build outputs left)."""
    base = tmp_path_factory.mktemp("wheel")
    source = copy_source(base / "source")
    dist = base / "dist"
    pip = (sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation")
    _run(*pip, "--no-index", "--quiet", "--wheel-dir", dist, source, cwd=base, timeout=180)
    (built,) = dist.glob("quorum_celery-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the wheel installed, seeing this environment's packages."""
    venv = tmp_path_factory.mktemp("venv")
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=venv)
    python = venv / "bin" / "python"
    purelib = _run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=venv)
    ours = [*site.getsitepackages(), site.getusersitepackages()]
    (Path(purelib.strip()) / "dependencies.pth").write_text("\n".join(ours))
    pip = (sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index")
    _run(*pip, "--quiet", wheel, cwd=venv)
    return venv


def _source_files(suffix: str) -> set[str]:
    """The files ending in `suffix` of the package `quorum` in the source tree, as the wheel
    names them (`quorum/shared/lua/take.lua`), its folders' links followed."""
    found = set()
    for folder, dirs, files in os.walk(ROOT / "quorum", followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        relative = Path(folder).relative_to(ROOT)
        found |= {(relative / name).as_posix() for name in files if name.endswith(suffix)}
    return found


def test_the_wheel_holds_quorum_alone_with_its_lua_templates_and_type_marker(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    dist_info = {name for name in names if name.startswith("quorum_celery-")}
    assert {name.split("/")[0] for name in dist_info} == {
        wheel.name.split("-py3")[0] + ".dist-info"
    }
    assert {name.split("/")[0] for name in names - dist_info} == {"quorum"}
    assert "quorum/py.typed" in names
    lua = _source_files(".lua")
    assert lua and "quorum/shared/lua/take.lua" in lua
    assert {name for name in names if name.endswith(".lua")} == lua
    assert {name for name in names if name.endswith(".py")} == _source_files(".py")
    html = _source_files(".html")  # the dashboard's templates
    assert "quorum/producer/templates/run.html" in html
    assert {name for name in names if name.endswith(".html")} == html
    assert "quorum/producer/static/live.js" in names


def test_installed_beside_a_service_with_its_own_shared_worker_and_producer(
    venv: Path, tmp_path: Path
) -> None:
    for name, text in SERVICE.items():
        path = tmp_path / "service" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    service = tmp_path / "service"

    out = _run(venv / "bin" / "python", "-s", service / "main.py", cwd=service)

    found: dict[str, Any] = json.loads(out.splitlines()[-1])
    files = {name: Path(file).resolve() for name, file in found["files"].items()}
    for name in ("shared", "worker", "producer"):
        assert files[name].is_relative_to(service.resolve()), (name, files[name])
    for name in ("quorum", "quorum.shared", "quorum.worker", "quorum.producer", "quorum.simulator"):
        assert files[name].is_relative_to(venv.resolve()), (name, files[name])
    assert found["take.lua"] > 0


def test_every_installed_file_lives_under_quorum(venv: Path) -> None:
    (record,) = venv.glob("lib/python*/site-packages/quorum_celery-*.dist-info/RECORD")
    site_packages = record.parent.parent
    allowed = [site_packages / "quorum", record.parent, venv / "bin" / "quorum"]
    lines = record.read_text().splitlines()
    installed = [(site_packages / line.split(",")[0]).resolve() for line in lines if line]
    outside = [
        path for path in installed if not any(path.is_relative_to(a.resolve()) for a in allowed)
    ]
    assert not outside, outside
    assert (venv / "bin" / "quorum").resolve() in installed


def test_the_quorum_command_runs(venv: Path) -> None:
    out = _run(venv / "bin" / "quorum", "--help", cwd=venv)
    assert "Usage: quorum" in out
