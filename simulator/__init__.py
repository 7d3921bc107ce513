"""OpenAI-compatible LLM simulator for tests, the demo and benchmarks.

Run it with ``python -m quorum.simulator --port 0 --latency 0.2``; script behaviour per run by
putting ``<<sim:{...}>>`` directives in prompts (see ``quorum.simulator.script``).
"""

from quorum.simulator.config import Latency, SimConfig, build_parser, parse_args, parse_latency
from quorum.simulator.fake import fake_value, violating_value
from quorum.simulator.script import (
    CallInfo,
    Decision,
    Directive,
    DirectiveError,
    analyze,
    decide,
    parse_directive,
)
from quorum.simulator.server import main, make_app, serve

__all__ = [
    "CallInfo",
    "Decision",
    "Directive",
    "DirectiveError",
    "Latency",
    "SimConfig",
    "analyze",
    "build_parser",
    "decide",
    "fake_value",
    "main",
    "make_app",
    "parse_args",
    "parse_directive",
    "parse_latency",
    "serve",
    "violating_value",
]
