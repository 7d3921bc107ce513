"""Quorum's Celery worker: the app (`worker.app`) and its jobs (`worker.jobs`)."""

__all__: list[str] = []
