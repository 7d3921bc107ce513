"""The reference: py-ai-toolkit's `run_task`, the same three validation modes in one asyncio
process, pointed at the same simulator (the `bench` extra installs it).

Its `run_task` returns the task's output whether or not validation ran to the end: a node
that exceeds its internal 60 s timeout is dropped silently. An output counts as *validated*
here only when the toolkit's `after_validation` hook fired, and as *passed* when that hook
said it was valid.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from quorum.bench.driver import run_workload
from quorum.bench.workloads import TEMPLATE, message

__all__ = ["available", "reference", "version"]


class Purchase(BaseModel):
    """The task's response model."""

    product: str
    quantity: int


def available() -> bool:
    """Whether py-ai-toolkit is installed."""
    try:
        import py_ai_toolkit  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    """The installed py-ai-toolkit version."""
    import py_ai_toolkit

    return str(py_ai_toolkit.__version__)


def _config(config: dict[str, Any]) -> Any:
    from py_ai_toolkit.core.domain import schemas

    kinds = {
        "single_shot": schemas.SingleShotValidationConfig,
        "threshold": schemas.ThresholdVotingValidationConfig,
        "k_ahead": schemas.KAheadVotingValidationConfig,
    }
    fields = {k: v for k, v in config.items() if k in ("issues", "count", "required_ahead")}
    return kinds[config["mode"]](**fields, max_retries=config.get("max_retries", 0))


async def reference(spec: dict[str, Any]) -> dict[str, Any]:
    """Runs through py-ai-toolkit's `PyAIToolkit.run_task`, one toolkit for the process."""
    from py_ai_toolkit import Hooks, LLMConfig, PyAIToolkit

    toolkit = PyAIToolkit(
        main_model_config=LLMConfig(model="sim", api_key="sim", base_url=spec["base_url"])
    )
    config = _config(spec["config"])

    async def run_one(index: int) -> tuple[bool, bool]:
        verdicts: list[bool] = []

        async def after_validation(context: Any) -> None:
            verdicts.append(bool(context.is_valid))

        output = await toolkit.run_task(
            template=TEMPLATE,
            response_model=Purchase,
            kwargs={"message": message(spec["tag"], index)},
            config=config,
            hooks=Hooks(after_validation=after_validation),
        )
        validated = output is not None and bool(verdicts)
        return validated, validated and verdicts[-1]

    return await run_workload(spec, run_one)
