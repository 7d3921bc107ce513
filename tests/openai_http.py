"""The HTTP library the installed openai SDK is built on: `httpx`, or `httpx2` in newer SDKs.

Tests that build SDK responses or mock its transport take it from here, so that they run
against whichever SDK version the environment resolved.
"""

import openai._exceptions as _sdk

http = getattr(_sdk, "httpx2", None) or _sdk.httpx

__all__ = ["http"]
