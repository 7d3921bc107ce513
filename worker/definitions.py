"""A worker's defined tasks: the modules of `QUORUM_IMPORTS` (imported at start, like
Celery's `imports`) define them; once the worker is ready it publishes them to the registry,
and again every quarter of its TTL (`quorum.shared.registry`)."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready

from quorum.shared.definitions import definitions
from quorum.shared.registry import Registry
from quorum.shared.settings import get_settings
from quorum.shared.store import RunStore

__all__ = ["publish_definitions"]

log = logging.getLogger(__name__)


@worker_ready.connect
def publish_definitions(sender: Any = None, **_: Any) -> None:
    """Publish this worker's definitions, and keep them published while it runs."""
    settings = get_settings()
    store = RunStore.from_settings(settings)
    registry = Registry(store.redis, store.keys, ttl_s=settings.registry_ttl_s)
    worker = getattr(sender, "hostname", "") or "worker"
    registry.keep_published(definitions(), worker=worker)
