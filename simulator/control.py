"""A small client for the simulator's control endpoints (`/_sim/...`)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

__all__ = ["SimulatorControl"]


class SimulatorControl:
    """Reads the call log and stats of a running simulator, and changes its config."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url  # ends with /v1, ready for OpenAI(base_url=...)
        self.root_url = base_url.removesuffix("/v1")

    def request(self, method: str, path: str, data: Any = None) -> Any:
        """Send a JSON request to the simulator; return its decoded JSON answer."""
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(
            self.root_url + path,
            data=body,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def calls(self, scope: str | None = None, kind: str | None = None) -> list[dict[str, Any]]:
        """Logged calls (finished or in flight), optionally of one directive id and one kind."""
        return [
            call
            for call in self.request("GET", "/_sim/calls")
            if (scope is None or call["scope"] == scope) and (kind is None or call["kind"] == kind)
        ]

    def stats(self) -> dict[str, int]:
        """Calls so far, calls in flight, and the most ever in flight at once."""
        return dict(self.request("GET", "/_sim/stats"))

    def clear(self) -> None:
        """Clear the call log and counters."""
        self.request("DELETE", "/_sim/calls")

    def configure(self, **fields: Any) -> dict[str, Any]:
        """Change the config at runtime; return the new config."""
        return dict(self.request("POST", "/_sim/config", fields))
