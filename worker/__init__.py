"""Quorum's Celery worker: the app (`quorum.worker.app`) and its jobs (`quorum.worker.jobs`)."""

__all__: list[str] = []
