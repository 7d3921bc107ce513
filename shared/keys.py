"""Every Redis key Quorum uses, built in one place.

A run's keys carry its id in braces, a Redis Cluster hash tag, so that they all live on one
shard and the store's multi-key transactions stay atomic when the store is a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys:
    """Key builder for one namespace (`quorum` by default)."""

    namespace: str = "quorum"

    def _join(self, *parts: object) -> str:
        return ":".join((self.namespace, *map(str, parts)))

    def run(self, run_id: str) -> str:
        """Hash: spec, status, attempt, result, error, timestamps, token usage."""
        return self._join("run", f"{{{run_id}}}")

    def events(self, run_id: str) -> str:
        """Stream: the run's provenance, one entry per event."""
        return self._join("run", f"{{{run_id}}}", "events")

    def done(self, run_id: str) -> str:
        """List: the final status, pushed once when the run ends; waiters block on it."""
        return self._join("run", f"{{{run_id}}}", "done")

    def votes(self, run_id: str, attempt: int) -> str:
        """Hash: `{issue}:{index}` → vote JSON, each written once."""
        return self._join("run", f"{{{run_id}}}", "votes", attempt)

    def decisions(self, run_id: str, attempt: int) -> str:
        """Hash: issue index → `passed` / `failed`, the early-decision flags votes read."""
        return self._join("run", f"{{{run_id}}}", "decisions", attempt)

    def rounds(self, run_id: str, attempt: int) -> str:
        """Hash: the attempt's voting rounds. `{issue}:{index}` → the round that planned the
        vote (negated once the vote has finished), `out/{round}` → the round's votes not yet
        finished, `tally/{round}` → who tallies the round (the vote that finished it last, or
        `tally`, the chord's job)."""
        return self._join("run", f"{{{run_id}}}", "rounds", attempt)

    def idempotency(self, key: str) -> str:
        """String: the run id an idempotency key was first used for."""
        return self._join("idem", key)

    def runs(self) -> str:
        """Sorted set: run ids by creation time."""
        return self._join("runs")

    def deadlines(self) -> str:
        """Sorted set: live run ids by deadline (epoch seconds); the sweep ends those past it."""
        return self._join("deadlines")

    def progress(self) -> str:
        """Sorted set: live run ids by their last progress; the sweep resumes stalled ones."""
        return self._join("progress")

    def sweep_lock(self) -> str:
        """String: held by the one worker sweeping right now (SET NX PX)."""
        return self._join("lock", "sweep")

    def definitions(self) -> str:
        """Hash: defined task name → its published definition (JSON: template, schema,
        config, checks, content hash, the worker that published it). Every worker with the
        code republishes at start and every quarter of `QUORUM_REGISTRY_TTL_S`."""
        return self._join("{tasks}", "definitions")

    def definition_conflicts(self) -> str:
        """Hash: defined task name → the last conflict seen (JSON: the two hashes and
        workers), when two workers published different content under one name."""
        return self._join("{tasks}", "conflicts")
