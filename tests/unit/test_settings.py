"""Settings: defaults, the environment names docs/architecture.md §7 documents, a secret API
key."""

from __future__ import annotations

import pytest
from celery import Celery
from pydantic import SecretStr, ValidationError

from quorum.shared.broker import celery_config
from quorum.shared.settings import Settings

ENV_NAMES = [
    "QUORUM_REDIS_URL",
    "QUORUM_BROKER_URL",
    "OPENAI_API_KEY",
    "QUORUM_OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "QUORUM_OPENAI_BASE_URL",
    "QUORUM_MODEL",
    "QUORUM_VALIDATOR_MODEL",
    "QUORUM_VISIBILITY_TIMEOUT_S",
    "QUORUM_LLM_TIMEOUT_S",
    "QUORUM_NAMESPACE",
    "QUORUM_RESULT_TTL_S",
    "QUORUM_STRUCTURED_OUTPUT",
    "QUORUM_MAX_PAYLOAD_BYTES",
    "QUORUM_TASK_SENT_EVENTS",
    "QUORUM_REDIS_MAX_CONNECTIONS",
    "QUORUM_WORKER_INTAKE_BATCH",
    "QUORUM_RESULT_BACKEND_URL",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_defaults() -> None:
    settings = Settings()
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.broker == settings.redis_url
    assert settings.namespace == "quorum"
    assert settings.result_ttl_s == 7 * 24 * 3600
    assert settings.openai_api_key is None
    assert settings.openai_base_url is None
    assert settings.structured_output == "json_schema"
    assert settings.llm_timeout_s > 0
    assert settings.visibility_timeout_s > 0
    assert settings.validator_model is None
    assert settings.queues == ("quorum.tasks", "quorum.votes", "quorum.control")


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    [
        ("QUORUM_REDIS_URL", "redis://store:6380/2", "redis_url", "redis://store:6380/2"),
        ("QUORUM_BROKER_URL", "amqp://guest@rabbit//", "broker", "amqp://guest@rabbit//"),
        ("OPENAI_BASE_URL", "http://llm:8000/v1", "openai_base_url", "http://llm:8000/v1"),
        ("QUORUM_MODEL", "qwen2.5", "model", "qwen2.5"),
        ("QUORUM_VALIDATOR_MODEL", "llama3", "validator_model", "llama3"),
        ("QUORUM_VISIBILITY_TIMEOUT_S", "1200", "visibility_timeout_s", 1200),
        ("QUORUM_LLM_TIMEOUT_S", "12.5", "llm_timeout_s", 12.5),
        ("QUORUM_NAMESPACE", "staging", "namespace", "staging"),
        ("QUORUM_RESULT_TTL_S", "3600", "result_ttl_s", 3600),
        ("QUORUM_STRUCTURED_OUTPUT", "json_object", "structured_output", "json_object"),
    ],
)
def test_environment_names(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, field: str, expected: object
) -> None:
    monkeypatch.setenv(name, value)
    assert getattr(Settings(), field) == expected


def test_broker_falls_back_to_the_redis_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QUORUM_REDIS_URL", "redis://store:6380/2")
    settings = Settings()
    assert settings.broker_url is None
    assert settings.broker == "redis://store:6380/2"


CLUSTER = "redis+cluster://10.0.0.1:7000,10.0.0.2:7000"


def test_a_cluster_store_without_a_broker_of_its_own_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUORUM_REDIS_URL", CLUSTER)
    with pytest.raises(ValidationError, match="set QUORUM_BROKER_URL to RabbitMQ"):
        Settings()
    monkeypatch.setenv("QUORUM_BROKER_URL", CLUSTER)
    with pytest.raises(ValidationError, match="Celery's broker cannot use"):
        Settings()
    monkeypatch.delenv("QUORUM_REDIS_URL")
    monkeypatch.delenv("QUORUM_BROKER_URL")
    plain = Settings().model_copy(update={"redis_url": CLUSTER})  # model_copy checks nothing
    with pytest.raises(ValueError, match="QUORUM_BROKER_URL"):
        celery_config(plain)  # a client or worker made from it stops here


def test_a_cluster_store_keeps_celerys_chords_in_a_plain_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUORUM_REDIS_URL", CLUSTER)
    monkeypatch.setenv("QUORUM_BROKER_URL", "redis://broker:6379/0")
    settings = Settings()
    assert settings.redis_cluster
    assert settings.result_backend == "redis://broker:6379/0"  # the broker's plain Redis
    assert celery_config(settings)["result_backend"] == "redis://broker:6379/0"
    monkeypatch.setenv("QUORUM_BROKER_URL", "amqp://guest@rabbit//")
    with pytest.raises(ValidationError, match="set QUORUM_RESULT_BACKEND_URL"):
        Settings()
    monkeypatch.setenv("QUORUM_RESULT_BACKEND_URL", CLUSTER)
    with pytest.raises(ValidationError, match="plain Redis"):
        Settings()
    monkeypatch.setenv("QUORUM_RESULT_BACKEND_URL", "rediss://chords:6379/1")
    config = celery_config(Settings())
    assert config["result_backend"] == "rediss://chords:6379/1"
    assert config["redis_backend_use_ssl"] is not None  # TLS for a rediss:// backend
    assert config["broker_use_ssl"] is None


def test_a_single_redis_store_keeps_the_chords_beside_the_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("QUORUM_REDIS_URL", "redis://store:6380/2")
    monkeypatch.setenv("QUORUM_BROKER_URL", "amqp://guest@rabbit//")
    settings = Settings()
    assert not settings.redis_cluster
    assert celery_config(settings)["result_backend"] == "redis://store:6380/2"


def test_api_key_is_a_secret_that_does_not_show(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    settings = Settings()
    assert isinstance(settings.openai_api_key, SecretStr)
    assert settings.openai_api_key.get_secret_value() == "sk-very-secret"
    assert "sk-very-secret" not in repr(settings)
    assert "sk-very-secret" not in str(settings)
    assert "sk-very-secret" not in settings.model_dump_json()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("QUORUM_STRUCTURED_OUTPUT", "xml"),
        ("QUORUM_RESULT_TTL_S", "0"),
        ("QUORUM_LLM_TIMEOUT_S", "-1"),
        ("QUORUM_VISIBILITY_TIMEOUT_S", "soon"),
    ],
)
def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_settings_are_frozen() -> None:
    with pytest.raises(ValidationError):
        Settings().model = "other"  # type: ignore[misc]


def test_every_field_has_a_description() -> None:
    undocumented = [n for n, f in Settings.model_fields.items() if not f.description]
    assert undocumented == []


def test_celery_config_sends_task_sent_events_only_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = celery_config(Settings())
    assert config["worker_send_task_events"] is True
    assert config["task_send_sent_event"] is False
    monkeypatch.setenv("QUORUM_TASK_SENT_EVENTS", "true")
    assert celery_config(Settings())["task_send_sent_event"] is True


def test_celery_config_gives_the_result_backend_and_the_broker_the_connection_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # kombu's own limit (10 per channel) made a burst's sends fail and its recovery close
    # the connections of threads still sending (docs/benchmarks.md, History).
    assert celery_config(Settings())["broker_transport_options"]["max_connections"] == 1000
    monkeypatch.setenv("QUORUM_REDIS_MAX_CONNECTIONS", "300")
    config = celery_config(Settings())
    assert config["redis_max_connections"] == 300
    assert config["broker_transport_options"]["max_connections"] == 300


def test_celery_config_gives_a_redis_broker_the_intake_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert celery_config(Settings())["broker_transport_options"]["intake_batch"] == 64
    monkeypatch.setenv("QUORUM_WORKER_INTAKE_BATCH", "1")
    assert celery_config(Settings())["broker_transport_options"]["intake_batch"] == 1
    monkeypatch.setenv("QUORUM_BROKER_URL", "amqp://guest@rabbit//")
    assert "intake_batch" not in celery_config(Settings())["broker_transport_options"]


def test_jobs_leave_counting_retries_to_quorum() -> None:
    """Celery caps `Task.retry(max_retries=None)` at the job's own limit, 3 by default, which
    would cut short `QUORUM_LLM_MAX_RETRIES` (6) and a tally's waits for its votes (40)."""
    from quorum.worker.jobs import route, tally, task_node, vote

    assert [job.max_retries for job in (task_node, vote, tally, route)] == [None] * 4


def test_a_worker_shares_one_chord_backend_between_its_threads() -> None:
    """One backend and pool per process, which waits past the connection limit; the store's
    connections identify their client without a metadata look-up each."""
    from concurrent.futures import ThreadPoolExecutor

    import redis

    from quorum.shared.connection import DRIVER_INFO, connect
    from quorum.worker.app import ChordResultBackend, chord_backend, create_app

    app = create_app(Settings(redis_url="redis://localhost:6399/0", redis_max_connections=7))
    backend = app.backend
    with ThreadPoolExecutor(4) as threads:
        assert set(threads.map(lambda _: app.backend, range(8))) == {backend}
    assert isinstance(backend, ChordResultBackend)
    pool = backend.client.connection_pool
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert pool.max_connections == 7
    assert chord_backend("redis://r:6379/1")["result_backend"].endswith("+redis://r:6379/1")
    store = connect("redis://localhost:6399/0", max_connections=2).connection_pool
    assert store.connection_kwargs["driver_info"] is DRIVER_INFO


@pytest.mark.parametrize(
    ("broker", "declare"),
    [("redis://broker:6379/0", []), ("amqp://guest@rabbit//", None)],
)
def test_jobs_sent_to_a_redis_broker_skip_the_queue_declaration(
    monkeypatch: pytest.MonkeyPatch, broker: str, declare: list[object] | None
) -> None:
    monkeypatch.setenv("QUORUM_BROKER_URL", broker)
    celery = Celery("routes")
    celery.conf.update(celery_config(Settings()))

    for name in ("quorum.task_node", "quorum.vote", "quorum.route"):
        options = celery.amqp.router.route({}, name)
        assert options["queue"].name in Settings().queues
        assert options.get("declare") == declare  # what Celery passes on to kombu's publish
