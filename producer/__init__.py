"""What other services use to run validated LLM tasks: the Python client and the CLI."""

from quorum.producer.client import TaskClient, TaskRun

__all__ = ["TaskClient", "TaskRun"]
