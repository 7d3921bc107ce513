"""The registry of defined tasks in Redis: what workers publish and producers without the code
submit by name against.

Each worker publishes every definition its imported modules made (`TaskDefinition.published`)
when it starts, and again every quarter of `QUORUM_REGISTRY_TTL_S` (default a day), the
TTL of the registry's keys: the registry lives as long as a worker with the code runs, and a
definition no worker has any more goes within a day. Two workers publishing different content
under one name is a conflict: logged at ERROR, kept in the conflicts hash (counted in
`/metrics`), never silently mixed — each run records the name and hash it was submitted with.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, Field

from quorum.shared.connection import REDIS_ERRORS, Client
from quorum.shared.definitions import TaskDefinition
from quorum.shared.errors import StoreError
from quorum.shared.keys import Keys
from quorum.shared.scripts import lua

__all__ = ["PublishedTask", "Registry"]

log = logging.getLogger(__name__)

RETRY_S = 5.0
"""Seconds between tries to publish while Redis does not answer."""


class PublishedTask(BaseModel):
    """A defined task as the registry holds it: what a producer without the code needs."""

    name: str
    template: str
    response_schema: dict[str, Any] = Field(description="What the LLM is asked for.")
    response_name: str
    wrapped: bool = Field(description='A non-object type, asked for as {"value": …}.')
    config: dict[str, Any] | None = Field(description="null: no votes, the checks decide.")
    checks: list[dict[str, Any]] = Field(description='Expression checks: {"expr", "message"}.')
    variables: list[str] = Field(description="The template's variables: the kwargs to give.")
    validators: list[str] = Field(description="The Python validators' names (run on workers).")
    model: str | None = None
    validator_model: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    system: str | None = None
    hash: str = Field(description="The definition's content hash.")
    worker: str = Field(description="The worker that published it last.")


class Registry:
    """The published definitions on one Redis, under one namespace."""

    def __init__(self, client: Client, keys: Keys, *, ttl_s: int) -> None:
        self.redis = client
        self.keys = keys
        self.ttl_s = ttl_s
        self._publish = client.register_script(lua("publish_definition"))

    def publish(self, definitions: Iterable[TaskDefinition], *, worker: str) -> list[str]:
        """Publish each definition (refreshing the TTL); return the names in conflict."""
        keys = [self.keys.definitions(), self.keys.definition_conflicts()]
        conflicts = []
        for definition in definitions:
            body = json.dumps({**definition.published(), "worker": worker}, sort_keys=True)
            args: list[str | int | float] = [
                definition.name,
                body,
                definition.hash,
                worker,
                self.ttl_s,
                time.time(),
            ]
            try:
                reply = self._publish(keys=keys, args=args)
            except REDIS_ERRORS as exc:
                raise StoreError(f"registry: {exc}") from exc
            if int(reply[0]):
                conflicts.append(definition.name)
                log.error(
                    "CONFLICT: task %r: this worker (%s) publishes definition %s, worker %s "
                    "published %s: deploy one version of a definition at a time",
                    definition.name,
                    worker,
                    definition.hash,
                    _text(reply[2]),
                    _text(reply[1]),
                )
        return conflicts

    def get(self, name: str) -> dict[str, Any] | None:
        """The published definition of `name`, or None."""
        try:
            raw = self.redis.hget(self.keys.definitions(), name)
        except REDIS_ERRORS as exc:
            raise StoreError(f"registry: {exc}") from exc
        return None if raw is None else dict(json.loads(raw))

    def all(self) -> dict[str, dict[str, Any]]:
        """Every published definition, by name."""
        return self._hash(self.keys.definitions())

    def conflicts(self) -> dict[str, dict[str, Any]]:
        """The conflicts seen within the TTL, by name."""
        return self._hash(self.keys.definition_conflicts())

    def _hash(self, key: str) -> dict[str, dict[str, Any]]:
        try:
            raw = self.redis.hgetall(key)
        except REDIS_ERRORS as exc:
            raise StoreError(f"registry: {exc}") from exc
        return {_text(name): json.loads(value) for name, value in sorted(raw.items())}

    def keep_published(
        self, definitions: list[TaskDefinition], *, worker: str
    ) -> threading.Thread | None:
        """Publish now, then every quarter of the TTL from a daemon thread (every
        `RETRY_S` while Redis does not answer); None: nothing to publish."""
        if not definitions:
            return None
        names = ", ".join(d.name for d in definitions)

        def attempt() -> bool:
            try:
                self.publish(definitions, worker=worker)
            except StoreError as exc:
                log.warning("registry: publishing %s failed, next try later: %s", names, exc)
                return False
            return True

        first = attempt()
        if first:
            log.info("published %d defined task(s): %s", len(definitions), names)

        def again() -> None:
            published = first
            while True:
                time.sleep(self.ttl_s / 4 if published else min(RETRY_S, self.ttl_s / 4))
                published = attempt()

        thread = threading.Thread(target=again, name="quorum-registry", daemon=True)
        thread.start()
        return thread


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
