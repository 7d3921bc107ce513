"""The Grafana dashboard in deploy/grafana/: it parses, and every metric its queries name is one
the API's collectors export (`producer/metrics.py`)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.core import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from quorum.producer.metrics import RunFacts, TaskMetrics, families
from quorum.shared.models import TaskStatus

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "quorum-runs.json"
METRIC = re.compile(r"\bquorum_[a-z_]+\b")


class _Runs:
    """A collector over fixed facts, so that every family has samples."""

    def collect(self) -> Any:
        run = RunFacts(
            status=TaskStatus.SUCCESSFUL,
            attempts=2,
            retries=1,
            duration_s=1.5,
            issue_votes=(("passed", 3), ("failed", 2)),
            tokens={("m", "prompt"): 10},
        )
        return iter(families([run], window_s=3600))


class _Registry:
    def all(self) -> dict[str, Any]:
        return {"t": {}}

    def conflicts(self) -> dict[str, Any]:
        return {"t": {}}


def exported_samples() -> set[str]:
    """Every sample name the API's collectors write (`_bucket`, `_gcount`, … included)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Runs())  # type: ignore[arg-type]
    registry.register(TaskMetrics(_Registry()))  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_the_dashboard_parses_and_is_importable():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "datasource" in variables


def test_every_metric_the_dashboard_queries_is_exported():
    exported = exported_samples()
    named = {m for expr in queries(json.loads(DASHBOARD.read_text())) for m in METRIC.findall(expr)}
    assert named, "no metric found in the queries"
    assert sorted(named - exported) == [], "the dashboard names metrics /metrics does not export"
    # and it shows every family the collectors export
    bases = {re.sub(r"_(bucket|gcount|gsum)$", "", name) for name in exported}
    shown = {re.sub(r"_(bucket|gcount|gsum)$", "", name) for name in named}
    assert sorted(bases - shown) == [], "exported metrics the dashboard leaves out"
