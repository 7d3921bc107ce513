"""`shared.connection`: cluster URLs, and a probe that says at once when nothing answers."""

from __future__ import annotations

import time

import pytest

from quorum.shared.connection import cluster_nodes, probe
from quorum.shared.errors import StoreError


def test_a_cluster_url_lists_its_nodes_and_credentials() -> None:
    nodes, options = cluster_nodes("redis+cluster://10.0.0.1:7000,10.0.0.2:7001")
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.2", 7001)]
    assert options == {}
    nodes, options = cluster_nodes("rediss+cluster://app:s%40cret@redis-0:6379/0")
    assert nodes == [("redis-0", 6379)]
    assert options == {"username": "app", "password": "s@cret", "ssl": True}
    _, options = cluster_nodes("redis+cluster://:pw@[::1]:7000")
    assert options == {"password": "pw"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://localhost:6379/0", "starts with redis\\+cluster://"),
        ("redis+cluster://localhost", "host:port"),
        ("redis+cluster://a:1,b", "host:port"),
        ("redis+cluster://a:1/2", "one database"),
    ],
)
def test_a_bad_cluster_url_is_refused_naming_the_problem(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cluster_nodes(url)


def test_probing_a_cluster_that_does_not_answer_fails_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(StoreError, match="does not answer"):
        probe("redis+cluster://127.0.0.1:1", timeout_s=0.5)
    assert time.monotonic() - started < 5
