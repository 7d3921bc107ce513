"""Configuration, read once from the environment (`QUORUM_*`, `OPENAI_*`) and passed down."""

from __future__ import annotations

import ssl
from functools import lru_cache
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Price", "Settings", "get_settings", "is_cluster_url"]

Dialect = Literal["json_schema", "json_object"]


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://` or `rediss+cluster://`)."""
    return url.startswith(("redis+cluster://", "rediss+cluster://"))


class Price(BaseModel):
    """A model's prices in USD per million tokens.

    `cached` (prompt tokens served from the provider's cache) defaults to `prompt`;
    `reasoning` (a part of the completion tokens) defaults to `completion`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: float = Field(ge=0)
    completion: float = Field(ge=0)
    cached: float | None = Field(None, ge=0)
    reasoning: float | None = Field(None, ge=0)


class Settings(BaseSettings):
    """Every setting Quorum reads. Nothing else in the project reads the environment."""

    model_config = SettingsConfigDict(env_prefix="QUORUM_", extra="ignore", frozen=True)

    redis_url: str = Field(
        "redis://localhost:6379/0",
        description="Redis that holds runs, status and provenance (redis:// or rediss://), "
        "or a Redis Cluster: `redis+cluster://host:port[,host:port...]` (rediss+cluster:// "
        "with TLS), any of its nodes; the client finds the others. A cluster store needs "
        "`QUORUM_BROKER_URL` (Celery's broker cannot use a cluster).",
    )
    broker_url: str | None = Field(
        None,
        description="Celery broker URL; defaults to the Redis URL (amqp:// for RabbitMQ). "
        "Required with a cluster store: RabbitMQ, or a plain Redis apart from the cluster.",
    )
    result_backend_url: str | None = Field(
        None,
        description="Plain Redis (redis:// or rediss://) of Celery's result backend, which "
        "keeps what a Celery client of the raw door waits for (quorum.submit's answer; "
        "Quorum's own jobs store no result); defaults to the Redis URL. With a cluster "
        "store it defaults to the broker when that is a plain Redis, and must be set when the "
        "broker is RabbitMQ.",
    )
    redis_max_connections: int = Field(
        1000,
        gt=0,
        description="Most connections one process opens to Redis for runs and results, and "
        "each channel of a Redis broker; past it a command of the store, the result backend or "
        "the broker waits for a free connection instead of failing.",
    )
    namespace: str = Field("quorum", description="Prefix of every Redis key Quorum writes.")
    result_ttl_s: int = Field(
        7 * 24 * 3600, gt=0, description="How long a run and its provenance are kept in Redis."
    )
    model: str = Field("gpt-4o-mini", description="Default model for task calls.")
    validator_model: str | None = Field(
        None, description="Default model for validator votes; unset: the task model."
    )
    openai_api_key: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_API_KEY", "QUORUM_OPENAI_API_KEY"),
        description="API key of the OpenAI-compatible server; never logged nor stored in a run.",
    )
    openai_base_url: str | None = Field(
        None,
        validation_alias=AliasChoices("OPENAI_BASE_URL", "QUORUM_OPENAI_BASE_URL"),
        description="Base URL of the OpenAI-compatible server (default: OpenAI's).",
    )
    structured_output: Dialect = Field(
        "json_schema",
        description="Structured-output dialect: `json_schema` (OpenAI, vLLM, Ollama, "
        "llama-server; a server that refuses it like llama-cpp-python's is switched to "
        "`json_object` on its first refusal) or `json_object` (llama-cpp-python's server).",
    )
    llm_timeout_s: float = Field(
        60.0,
        gt=0,
        description="HTTP timeout of one LLM call: the only bound on a call in a threads "
        "pool, where Celery's time limits are not enforced.",
    )
    llm_max_retries: int = Field(
        6, ge=0, description="Transient LLM errors retried per job (Celery backoff), at most."
    )
    llm_backoff_max_s: float = Field(
        30.0,
        gt=0,
        description="Longest backoff between transient retries (a server's longer "
        "`Retry-After` wins, up to 300 s).",
    )
    visibility_timeout_s: int = Field(
        900,
        gt=0,
        description="Seconds before an unacknowledged job of a lost worker is redelivered; "
        "keep well above the longest job.",
    )
    unacked_restore_interval_s: float = Field(
        30.0,
        gt=0,
        description="How often workers sweep for jobs of lost workers to redeliver: recovery "
        "after a crash takes the visibility timeout plus up to this.",
    )
    worker_concurrency: int = Field(
        500,
        gt=0,
        description="Jobs one worker process runs at once (threads pool): the most LLM calls "
        "it keeps in flight. Set the pool size here rather than with `celery worker -c`: "
        "against an HTTPS server the worker makes one OpenAI client per 64 of these threads "
        "(a plain-HTTP server gets one connection per thread).",
    )
    worker_intake_batch: int = Field(
        64,
        gt=0,
        description="Most jobs a worker takes off a Redis queue in one round trip, within "
        "its concurrency, each recorded as unacknowledged in the same atomic step. Never more "
        "than half of those waiting: the rest is left to the workers beside it, so that a "
        "small voting round spreads over them. 1 takes them one by one.",
    )
    worker_pool: str = Field(
        "threads",
        description="Celery pool: threads suit I/O-bound LLM calls (prefork keeps only a few "
        "calls in flight).",
    )
    task_sent_events: bool = Field(
        False,
        description="Also send a `task-sent` event per job published, so that Flower lists "
        "jobs still queued, at a cost in worker CPU (see docs/benchmarks.md, History). "
        "Workers always send the received, started and finished events.",
    )
    max_payload_bytes: int = Field(
        1_000_000,
        gt=0,
        description="Largest template, kwargs, metadata or schema accepted at submit, "
        "largest kwargs a workflow node's run is made with once resolved from its upstream "
        "outputs (a larger one ends the node FAILED), and largest model output accepted (a "
        "larger one is an invalid attempt).",
    )
    max_request_bytes: int = Field(
        5_000_000,
        gt=0,
        description="Largest HTTP request body the API reads (413 past it, checked before "
        "the body is read); room for each part of a submit at `max_payload_bytes`.",
    )
    max_nesting_depth: int = Field(
        64,
        gt=0,
        le=190,
        description="Deepest nesting of arrays and objects accepted in kwargs, metadata, a "
        "response schema or a model's output; at most 190, so that a stored run always "
        "parses back (Pydantic's JSON parser stops at 200 levels).",
    )
    max_prompt_bytes: int = Field(
        2_000_000,
        gt=0,
        description="Longest prompt (in characters) a template may render to, and longest "
        "string or list it may build on the way; checked at submit and on every render.",
    )
    template_timeout_s: float = Field(
        1.0,
        gt=0,
        description="Seconds a template may take to compile, and again to render (at submit "
        "and on workers); past it the template is refused.",
    )
    run_timeout_s: float = Field(
        3600.0,
        gt=0,
        description="Default deadline of a run (submit's `timeout_s`); past it the sweep ends "
        "the run FAILED with code `timeout`.",
    )
    stall_after_s: float = Field(
        1800.0,
        gt=0,
        description="A live run with no progress for this long has lost its job: the sweep "
        "enqueues its current step again. Keep it well above the visibility timeout.",
    )
    sweep_interval_s: float = Field(
        15.0, gt=0, description="How often one of the workers sweeps for late and stalled runs."
    )
    prices: dict[str, Price] = Field(
        default_factory=dict,
        description='USD per million tokens by model, as JSON: `{"gpt-4o-mini": {"prompt": '
        '0.15, "completion": 0.6, "cached": 0.075}}` (`cached` defaults to `prompt`, '
        "`reasoning` to `completion`). Models not listed cost 0.",
    )
    redis_tls_ca_file: str | None = Field(
        None, description="CA bundle to check the Redis server's certificate (rediss://)."
    )
    redis_tls_cert_reqs: Literal["required", "optional", "none"] = Field(
        "required", description="Whether a rediss:// server's certificate must check out."
    )
    task_queue: str = Field("quorum.tasks", description="Queue of task-node jobs.")
    vote_queue: str = Field("quorum.votes", description="Queue of validator-vote jobs.")
    control_queue: str = Field("quorum.control", description="Queue of tally and route jobs.")
    imports: str = Field(
        "",
        description="Modules a worker imports at start, comma-separated (like Celery's "
        "`imports`): where its defined tasks (`quorum.define`) live.",
    )
    registry_ttl_s: int = Field(
        24 * 3600,
        gt=0,
        description="How long a published task definition lives in Redis. Each worker "
        "republishes its definitions at start and every quarter of this, so a definition "
        "stays while a worker that has its code runs, and goes within this once none does.",
    )
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token the HTTP API requires on every route but /healthz; "
        "unset: no auth (keep the API inside a trusted network).",
    )
    max_batch: int = Field(
        1000, gt=0, description="Most runs one batch submit (POST /v1/batches) may hold."
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Key of the HMAC-SHA256 signature of every webhook (the Quorum-Signature "
        "header); workers sign with it, receivers check with it. Needed on the workers.",
    )
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list,
        description='Host names a callback_url may point at, as JSON: ["hooks.example.com"]. '
        "Checked at submit and again before each delivery; empty: no callbacks accepted.",
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="HTTP timeout of one webhook delivery attempt."
    )
    webhook_retry_for_s: float = Field(
        3600.0,
        gt=0,
        description="How long after a run or workflow ends its webhook is retried (jittered "
        "exponential backoff) before it is given up and logged.",
    )
    webhook_backoff_max_s: float = Field(
        300.0, gt=0, description="Longest wait between two attempts at one webhook."
    )
    sse_heartbeat_s: float = Field(
        15.0,
        gt=0,
        description="A live event stream (Server-Sent Events) quiet for this long gets a "
        "comment line, so that proxies keep it open.",
    )
    metrics_window_s: int = Field(
        3600, gt=0, description="Runs created this many seconds back are counted in /metrics."
    )
    metrics_max_runs: int = Field(
        10_000, gt=0, description="At most this many of the newest runs are counted in /metrics."
    )

    @model_validator(mode="after")
    def _celery_can_run(self) -> Settings:
        """Refuse at start a cluster store with nowhere for Celery's broker or results."""
        _ = self.broker, self.result_backend
        return self

    @property
    def redis_cluster(self) -> bool:
        """Whether the store is a Redis Cluster (`redis+cluster://`, `rediss+cluster://`)."""
        return is_cluster_url(self.redis_url)

    @property
    def broker(self) -> str:
        """The broker URL, falling back to the Redis URL; `ValueError` for a cluster store
        with no broker of its own, or a broker URL that names a cluster."""
        if self.broker_url is not None and is_cluster_url(self.broker_url):
            raise ValueError(
                "QUORUM_BROKER_URL names a Redis Cluster, which Celery's broker cannot use: "
                "set it to RabbitMQ (amqp://...) or a plain Redis (redis://...)"
            )
        if self.broker_url is None and self.redis_cluster:
            raise ValueError(
                "QUORUM_REDIS_URL names a Redis Cluster, which Celery's broker cannot use: "
                "set QUORUM_BROKER_URL to RabbitMQ (amqp://...) or to a plain Redis "
                "(redis://...) apart from the cluster"
            )
        return self.broker_url or self.redis_url

    @property
    def result_backend(self) -> str:
        """The plain Redis of Celery's results (the raw door's answers): `result_backend_url`,
        else the store's Redis, else (a cluster store) the broker's Redis; `ValueError` if none
        fits."""
        if self.result_backend_url is not None:
            if not self.result_backend_url.startswith(("redis://", "rediss://")):
                raise ValueError(
                    "QUORUM_RESULT_BACKEND_URL must name a plain Redis (redis:// or rediss://)"
                )
            return self.result_backend_url
        if not self.redis_cluster:
            return self.redis_url
        if self.broker.startswith(("redis://", "rediss://")):
            return self.broker
        raise ValueError(
            "QUORUM_REDIS_URL names a Redis Cluster and the broker is not Redis: Celery's "
            "result backend needs a plain Redis; set QUORUM_RESULT_BACKEND_URL "
            "(redis://...)"
        )

    @property
    def redis_tls(self) -> dict[str, Any] | None:
        """TLS options (`ssl_*`, as redis-py and Celery take them) for a `rediss://` store."""
        return self.tls_for(self.redis_url)

    def tls_for(self, url: str) -> dict[str, Any] | None:
        """TLS options for a Redis at `url` (the store, the broker or the result backend):
        the `QUORUM_REDIS_TLS_*` settings for a `rediss://` or `rediss+cluster://` URL,
        else None."""
        if not url.startswith(("rediss://", "rediss+cluster://")):
            return None
        reqs = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL}
        options: dict[str, Any] = {
            "ssl_cert_reqs": reqs.get(self.redis_tls_cert_reqs, ssl.CERT_NONE)
        }
        if self.redis_tls_ca_file:
            options["ssl_ca_certs"] = self.redis_tls_ca_file
        return options

    @property
    def import_modules(self) -> tuple[str, ...]:
        """`imports` as module names."""
        return tuple(name.strip() for name in self.imports.split(",") if name.strip())

    @property
    def queues(self) -> tuple[str, str, str]:
        """Every queue a default worker consumes."""
        return (self.task_queue, self.vote_queue, self.control_queue)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read from the environment on first use."""
    return Settings()
