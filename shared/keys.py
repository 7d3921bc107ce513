"""Every Redis key Quorum uses, built in one place.

A run's keys carry its id in braces, a Redis Cluster hash tag, so that they all live on one
shard and the store's multi-key transactions stay atomic when the store is a cluster.
A workflow's node runs have ids `<workflow id>.<node>.<item>`: their hash tag is the workflow
id (the part before the first `.`), so that a node run's end and its workflow's scheduling
state change in one atomic step. A standalone run's id (hex, no `.`) is its whole tag.
Keys that span runs (listing and sweep indexes, schedules, locks, idempotency keys) carry no
run's tag: each lives on its own name's slot (docs/architecture.md §6.1 says why).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys", "workflow_of"]


def _tagged(run_id: str) -> str:
    """The run id with its hash tag in braces: `{id}`, or `{workflow}.<node>.<item>`."""
    tag, dot, rest = run_id.partition(".")
    return f"{{{tag}}}{dot}{rest}"


def workflow_of(run_id: str) -> str | None:
    """The workflow a node run belongs to (its id's part before the first `.`), else None."""
    tag, dot, _ = run_id.partition(".")
    return tag if dot else None


@dataclass(frozen=True)
class Keys:
    """Key builder for one namespace (`quorum` by default)."""

    namespace: str = "quorum"

    def _join(self, *parts: object) -> str:
        return ":".join((self.namespace, *map(str, parts)))

    def run(self, run_id: str) -> str:
        """Hash: spec, status, attempt, result, error, timestamps, token usage."""
        return self._join("run", _tagged(run_id))

    def events(self, run_id: str) -> str:
        """Stream: the run's provenance, one entry per event."""
        return self._join("run", _tagged(run_id), "events")

    def done(self, run_id: str) -> str:
        """List: the final status, pushed once when the run ends; waiters block on it."""
        return self._join("run", _tagged(run_id), "done")

    def rounds(self, run_id: str, attempt: int) -> str:
        """Hash: the attempt's voting rounds (`shared.rounds`). `{issue}:{index}` → the round
        that planned the vote, `vote/{issue}:{index}` → the vote's JSON once cast (`-`: none
        was), `decided/{issue}` → the issue's `issue_decided` event, `out/{round}` → the
        round's votes not yet finished, `tally/{round}` → who tallies the round (the vote that
        finished it last, or `tally`, a `quorum.tally` job)."""
        return self._join("run", _tagged(run_id), "rounds", attempt)

    def call(self, run_id: str, attempt: int) -> str:
        """String: the lease of the job calling the task model for an attempt (SET NX PX),
        so that a duplicate of that job does not call it a second time."""
        return self._join("run", _tagged(run_id), "call", attempt)

    def idempotency(self, key: str) -> str:
        """String: the run id an idempotency key was first used for."""
        return self._join("idem", key)

    def runs(self) -> str:
        """Sorted set: run ids by creation time."""
        return self._join("runs")

    def runs_by_status(self, status: str) -> str:
        """Sorted set: ids of the runs that ended with `status`, by creation time; written by
        the step after the one that ends the run (listing).

        Like `runs` and every listing index, it spans runs, so it carries no run's hash tag:
        its slot is its own name's. No atomic step touches two indexes or an index and a
        run; a listing reads one index and checks the others by ZSCORE, each command on its
        own slot. Members whose run has expired are dropped when a listing meets them."""
        return self._join("runs", "status", status)

    def runs_by_task(self, task: str) -> str:
        """Sorted set: ids of the runs of a defined task, by creation time; written at submit
        (listing; its slot: as `runs_by_status`)."""
        return self._join("runs", "task", task)

    def runs_by_metadata(self, name: str, value: str) -> str:
        """Sorted set: ids of the runs whose metadata holds `name` = `value` (the value as
        text: a string itself, anything else as JSON), by creation time; written at submit
        (listing; its slot: as `runs_by_status`)."""
        return self._join("runs", "meta", f"{name}={value}")

    def webhooks(self) -> str:
        """Sorted set: the deliveries not yet settled — an ended run's id, or `wf:<id>` for
        an ended workflow (`shared.deliveries`) — by when the sweep should drive each next
        (epoch seconds). It spans runs and workflows, so its slot is its own name's; the
        durable record of a delivery is the `webhook` field of the run's or workflow's own
        hash, set in the step that ends it, and this index only schedules it."""
        return self._join("webhooks")

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

    # -- workflows: every key of one workflow carries its id as the hash tag ---------------

    def workflow(self, workflow_id: str) -> str:
        """Hash: the graph document, status, timestamps, deadline, nodes left, error."""
        return self._join("wf", f"{{{workflow_id}}}")

    def wf_nodes(self, workflow_id: str) -> str:
        """Hash: per node `<n>:<field>`: state, pending upstream count, failed inputs, items,
        runs started and ended, failed items (`shared.workflows` states the fields)."""
        return self._join("wf", f"{{{workflow_id}}}", "nodes")

    def wf_inputs(self, workflow_id: str) -> str:
        """Hash: node number → its resolved kwargs and map items (JSON), written once."""
        return self._join("wf", f"{{{workflow_id}}}", "inputs")

    def wf_events(self, workflow_id: str) -> str:
        """Stream: the workflow's events (node_ready, node_started, node_skipped, ...)."""
        return self._join("wf", f"{{{workflow_id}}}", "events")

    def wf_ready(self, workflow_id: str) -> str:
        """Set: node numbers (and `end`) whose state changed and await a scheduling step."""
        return self._join("wf", f"{{{workflow_id}}}", "ready")

    def wf_done(self, workflow_id: str) -> str:
        """List: the final status, pushed once when the workflow ends; waiters block on it."""
        return self._join("wf", f"{{{workflow_id}}}", "done")

    def wf_idempotency(self, key: str) -> str:
        """String: the workflow id an idempotency key was first used for."""
        return self._join("wfidem", key)

    def workflows(self) -> str:
        """Sorted set: live workflow ids by last activity; the sweep re-drives idle ones."""
        return self._join("workflows")

    def workflow_index(self) -> str:
        """Sorted set: every workflow id by creation time, written at submit (the dashboard's
        list of workflows, `shared/wflisting.py`). It spans workflows, so it carries no
        workflow's hash tag: its slot is its own name's, and no atomic step touches it with a
        workflow's keys. Its TTL is renewed and members older than the TTL are trimmed at each
        submit; a listing drops the members whose workflow has expired since."""
        return self._join("workflows", "index")
