"""Key building (docs/architecture.md §6): one namespace, run keys hash-tagged with the run
id."""

from __future__ import annotations

import pytest

from quorum.shared.keys import Keys

KEYS = Keys("quorum")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (KEYS.run("abc"), "quorum:run:{abc}"),
        (KEYS.events("abc"), "quorum:run:{abc}:events"),
        (KEYS.rounds("abc", 2), "quorum:run:{abc}:rounds:2"),
        (KEYS.idempotency("k"), "quorum:idem:k"),
        (KEYS.runs(), "quorum:runs"),
    ],
)
def test_exact_keys_for_namespace_quorum(key: str, expected: str) -> None:
    assert key == expected


def test_default_namespace_is_quorum() -> None:
    assert Keys() == KEYS


@pytest.mark.parametrize("namespace", ["quorum", "staging", "team-a:quorum"])
def test_every_key_of_a_run_carries_the_hash_tag_and_the_prefix(namespace: str) -> None:
    keys = Keys(namespace)
    run_id = "0f3e9a"
    for key in [
        keys.run(run_id),
        keys.events(run_id),
        keys.rounds(run_id, 1),
        keys.rounds(run_id, 12),
    ]:
        assert key.startswith(f"{namespace}:run:")
        assert "{" + run_id + "}" in key
        assert key.count("{") == key.count("}") == 1, "one hash tag, so one slot per run"
        assert "::" not in key


def test_namespaces_do_not_share_keys() -> None:
    assert Keys("a").run("x") != Keys("b").run("x")
    assert Keys("a").runs() != Keys("b").runs()
