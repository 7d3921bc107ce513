"""`shared.live`: event ids given by clients."""

from __future__ import annotations

import pytest

from quorum.shared.errors import InvalidRequestError
from quorum.shared.live import stream_id


def test_an_event_id_is_a_redis_stream_id() -> None:
    assert stream_id(None) == "0-0"
    assert stream_id("") == "0-0"
    assert stream_id("1733550000000-3") == "1733550000000-3"
    for bad in ("nope", "1-", "-1", "1-2-3", "1 -2", "9" * 30 + "-0"):
        with pytest.raises(InvalidRequestError, match="Last-Event-ID"):
            stream_id(bad)
