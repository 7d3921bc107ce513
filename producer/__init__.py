"""What other services use to run validated LLM tasks: the Python clients, the HTTP API and
the CLI."""

from quorum.producer.async_client import AsyncTaskClient, AsyncTaskRun
from quorum.producer.client import TaskClient, TaskRun

__all__ = ["AsyncTaskClient", "AsyncTaskRun", "TaskClient", "TaskRun"]
