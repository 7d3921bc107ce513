"""The HTTP library the installed openai SDK is built on: `httpx`, or `httpx2` in newer SDKs.

Tests that build SDK responses or mock its transport take it from here (the gateway's own
look-up), so that they run against whichever SDK version the environment resolved.
"""

from quorum.shared.llm import _http as http

__all__ = ["http"]
