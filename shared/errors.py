"""Every error Quorum raises, under one root.

    QuorumError
    ├── InvalidRequestError (a ValueError)  bad input refused at submit; nothing written
    │   ├── TemplateError                   syntax error, missing variable, sandbox escape
    │   ├── SchemaError                     response_model is no Pydantic class nor JSON Schema
    │   ├── PayloadTooLargeError            template, kwargs or schema over the size limit
    │   ├── UnknownTaskError                no defined task of that name (nor on this worker)
    │   └── RunNotFoundError                no run with that id
    ├── TaskFailedError                     a run ended FAILED or CANCELLED; carries evidence
    ├── WorkflowFailedError                 a workflow ended FAILED or CANCELLED; per node why
    ├── RunTimeoutError (a TimeoutError)    a run did not finish within the time waited
    ├── RoundIncompleteError                a tally came before its round's votes; retried
    ├── CallHeldError                       another job holds an attempt's call; retried later
    ├── LLMError                            a call to the model gave no answer
    │   ├── TransientLLMError               retry the same job later (429, 5xx, timeout)
    │   └── PermanentLLMError               fail the run now (401, 400, unknown model)
    ├── RunUnreadableError                  a stored run cannot be parsed back
    └── StoreError                          the Redis store could not be reached

Transient and permanent are told apart by class, never by matching strings: provider errors are
mapped in `shared/llm.py`, Redis errors by the store (`mapped` in `shared/scripts.py`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CallHeldError",
    "InvalidRequestError",
    "LLMError",
    "PayloadTooLargeError",
    "PermanentLLMError",
    "QuorumError",
    "RoundIncompleteError",
    "RunNotFoundError",
    "RunTimeoutError",
    "RunUnreadableError",
    "SchemaError",
    "StoreError",
    "TaskFailedError",
    "TemplateError",
    "TransientLLMError",
    "UnknownTaskError",
    "WorkflowFailedError",
]


class QuorumError(Exception):
    """Root of every error Quorum raises."""


class InvalidRequestError(QuorumError, ValueError):
    """A producer's request is invalid; it was refused before anything was written."""


class TemplateError(InvalidRequestError):
    """The template does not compile, escapes the sandbox, or uses a variable not provided."""


class SchemaError(InvalidRequestError):
    """The response model is neither a Pydantic model class nor a JSON Schema object."""


class PayloadTooLargeError(InvalidRequestError):
    """A part of the request is larger than the configured limit."""


class UnknownTaskError(InvalidRequestError):
    """No defined task of that name: not in the registry, nor defined in this process."""


class RunNotFoundError(InvalidRequestError, KeyError):
    """No run with that id exists (or it has expired)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "run not found"


class TaskFailedError(QuorumError):
    """A run ended without a validated result.

    `status` is the final `TaskStatus`, `reasons` every failure reasoning as text, and
    `last_output` the last output the model produced (a dict, raw text, or None), `code` why
    it stopped in one word (`validation_failed`, `timeout`, `budget_exceeded`, `llm_error`,
    `cancelled`, `internal`) and `usage` the tokens and cost the run spent.
    """

    def __init__(
        self,
        message: str,
        *,
        status: Any,
        reasons: list[str],
        last_output: Any,
        code: str = "",
        usage: Any = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reasons = reasons
        self.last_output = last_output
        self.code = code
        self.usage = usage


class WorkflowFailedError(QuorumError):
    """A workflow ended without every node done.

    `status` is the workflow's final status (`FAILED` or `CANCELLED`), `failures` maps each
    failed node to its reasons (each failed run's reasonings, or why it could not run), and
    `outputs` holds the outputs of the nodes that did succeed.
    """

    def __init__(
        self,
        message: str,
        *,
        status: str,
        failures: dict[str, list[str]],
        outputs: dict[str, Any],
    ) -> None:
        super().__init__(message)
        self.status = status
        self.failures = failures
        self.outputs = outputs


class RunTimeoutError(QuorumError, TimeoutError):
    """A run did not reach a terminal status within the time waited for it."""


class CallHeldError(QuorumError):
    """Another job holds the lease of this attempt's task call (a duplicate delivery, or the
    lease of a worker that died mid-call); the job is retried once the lease has run out,
    when the run has moved on or the call is this job's to make."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RoundIncompleteError(QuorumError):
    """A voting round's tally was asked for (`quorum.tally`) while votes of the round were
    still out; the tally is retried shortly."""


class LLMError(QuorumError):
    """A call to the model did not give an answer."""


class TransientLLMError(LLMError):
    """A failure that may pass if the same call is retried later (rate limit, 5xx, timeout)."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentLLMError(LLMError):
    """A failure that retrying cannot fix (auth, bad request, unknown model)."""


class RunUnreadableError(QuorumError):
    """A run is stored but cannot be read back (written by another version, or damaged)."""


class StoreError(QuorumError):
    """The Redis store could not be reached or answered with an error."""
