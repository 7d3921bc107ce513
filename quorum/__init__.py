"""Quorum: validated LLM tasks on Celery and Redis.

Everything a producer needs is importable from here::

    from quorum import TaskClient, ThresholdVotingValidationConfig

The code lives in four subpackages: `quorum.shared` (what workers and producers both import),
`quorum.worker` (the Celery app: `celery -A quorum.worker.app worker`), `quorum.producer`
(the Python client, the HTTP API, the CLI) and `quorum.simulator` (the OpenAI-compatible LLM
simulator).
"""

from quorum.producer.async_client import AsyncTaskClient, AsyncTaskRun
from quorum.producer.client import TaskClient, TaskRun
from quorum.producer.workflow import Workflow
from quorum.producer.workflow_run import WorkflowRun
from quorum.shared.definitions import TaskDefinition, define
from quorum.shared.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    QuorumError,
    RunNotFoundError,
    RunTimeoutError,
    SchemaError,
    StoreError,
    TaskFailedError,
    TemplateError,
    UnknownTaskError,
    WorkflowFailedError,
)
from quorum.shared.listing import RunPage, RunSummary
from quorum.shared.models import (
    ExpressionCheck,
    KAheadVotingValidationConfig,
    SingleShotValidationConfig,
    TaskStatus,
    ThresholdVotingValidationConfig,
    Usage,
    ValidationConfig,
)
from quorum.shared.settings import Settings
from quorum.shared.webhooks import verify as verify_webhook
from quorum.shared.wfstore import WorkflowStatus

__all__ = [
    "AsyncTaskClient",
    "AsyncTaskRun",
    "ExpressionCheck",
    "InvalidRequestError",
    "KAheadVotingValidationConfig",
    "PayloadTooLargeError",
    "QuorumError",
    "RunNotFoundError",
    "RunPage",
    "RunSummary",
    "RunTimeoutError",
    "SchemaError",
    "Settings",
    "SingleShotValidationConfig",
    "StoreError",
    "TaskClient",
    "TaskDefinition",
    "TaskFailedError",
    "TaskRun",
    "TaskStatus",
    "TemplateError",
    "ThresholdVotingValidationConfig",
    "UnknownTaskError",
    "Usage",
    "ValidationConfig",
    "Workflow",
    "WorkflowFailedError",
    "WorkflowRun",
    "WorkflowStatus",
    "define",
    "verify_webhook",
]
