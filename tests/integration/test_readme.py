"""The README's first example runs as written, against a real worker and the simulator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from quorum.shared.settings import get_settings

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_runs_as_written(
    client: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = re.search(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert example is not None
    monkeypatch.setenv("QUORUM_REDIS_URL", redis_url)  # the example's TaskClient() reads it
    get_settings.cache_clear()
    try:
        scope: dict[str, Any] = {"__name__": "readme"}
        exec(compile(example.group(1), str(README), "exec"), scope)
    finally:
        get_settings.cache_clear()
    assert isinstance(scope["purchase"], scope["Purchase"])
    assert {"submitted", "succeeded"} <= {event["type"] for event in scope["events"]}
