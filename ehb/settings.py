"""Settings: one name, one default, one place (12-factor, environment variables prefixed ``EHB_``).

Every process (``ehb worker``, ``ehb sink``, ``ehb simulate`` ...) reads the same model, so the
processes can be spread over machines and pointed at the same broker and database with the
same variables. When ``EHB_KAFKA_BOOTSTRAP`` / ``EHB_DATABASE_URL`` are unset, the commands use
the embedded broker and PostgreSQL that ``ehb up`` / ``ehb demo`` start (see ``ehb.embedded``).
"""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

__all__ = [
    "BrokerStorage",
    "Environment",
    "Settings",
    "StateKeyFormat",
    "StateStore",
    "get_settings",
]


#: Values that are examples, not secrets: refused in production.
_PLACEHOLDERS = ("change-me", "changeme", "replace-me", "example")
_WEAK = frozenset({"secret", "password", "postgres", "admin", "test", "ehb"})


def _is_placeholder(value: str) -> bool:
    lowered = value.strip().lower()
    return lowered in _WEAK or any(p in lowered for p in _PLACEHOLDERS)


class _FileVariables(PydanticBaseSettingsSource):
    """``EHB_<SETTING>_FILE=/path``: the setting's value is the file's content (Docker and
    Kubernetes secrets), trailing newline removed."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        import os

        values: dict[str, Any] = {}
        environ = {k.upper(): v for k, v in os.environ.items()}
        for name in self.settings_cls.model_fields:
            path = environ.get(f"EHB_{name.upper()}_FILE")
            if path:
                values[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        return values


class Environment(StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


class BrokerStorage(StrEnum):
    """Where the embedded broker keeps topics and committed offsets."""

    DURABLE = "durable"
    MEMORY = "memory"


class StateKeyFormat(StrEnum):
    """How the worker writes the citizens table's changelog keys (streams.state_codec)."""

    BINARY = "binary"
    JSON = "json"


class StateStore(StrEnum):
    """Where the worker keeps its citizens table (the changelog stays the source of truth)."""

    MEMORY = "memory"
    ROCKSDB = "rocksdb"


class Settings(BaseSettings):
    """All settings of the pipeline. docs/settings.md is generated from this model."""

    model_config = SettingsConfigDict(
        env_prefix="EHB_", env_file=None, extra="ignore", case_sensitive=False
    )

    env: Environment = Field(
        Environment.DEVELOPMENT,
        description="development or production. Production refuses to start without "
        "explicit secrets, broker and database.",
    )
    kafka_bootstrap: str | None = Field(
        None,
        description="Kafka bootstrap servers (host:port,...). Unset: use the embedded broker "
        "started by `ehb up` / `ehb demo`.",
    )
    kafka_security_protocol: str = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL."
    )
    kafka_sasl_mechanism: str = Field(
        "SCRAM-SHA-512", description="SASL mechanism when a SASL protocol is used."
    )
    kafka_sasl_username: str | None = Field(None, description="SASL username.")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password.")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle to verify the brokers.")
    kafka_session_timeout_s: float = Field(
        10.0,
        description="Consumer-group session timeout. Short in development so that joins and "
        "failover are quick; 30-45 s is usual on Apache Kafka in production.",
    )
    kafka_partitions: int = Field(
        8, ge=1, description="Partitions of the examination and routed topics (docs/reference.md)."
    )
    kafka_idempotence: bool | None = Field(
        None,
        description="Idempotent producers (enable.idempotence). Unset: on, except against "
        "the embedded broker: Tansu's object-store engine can answer DuplicateSequenceNumber "
        "for a batch a crash kept it from storing, which the client takes as delivered "
        "(docs/embedded.md). Off, producers keep one request in flight (the order holds) and "
        "a retry may store a batch twice, which every consumer absorbs by event id.",
    )
    kafka_linger_ms: int | None = Field(
        None,
        ge=0,
        le=5000,
        description="Least time (ms) a producer waits to fill a record batch. Unset: each "
        "client's own (5 ms; publishers 50 ms; the worker's producers 100 ms, which each "
        "batch's flush cuts short). The embedded durable broker gets 250: "
        "Tansu reads every record batch from its object store on a fetch (~9 ms each, "
        "whatever its size), so fewer, fuller batches are what keeps consumers up to date "
        "(docs/embedded.md).",
    )
    kafka_replication_factor: int = Field(
        1, ge=1, description="Replication factor of created topics (3 on the compose cluster)."
    )
    topic_prefix: str = Field("ehb.", description="Prefix of every topic name.")
    schema_registry_url: str | None = Field(
        None,
        description="Confluent-compatible schema registry. Unset: schema ids come from the "
        "versioned catalog schemas/catalog.json.",
    )
    database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL DSN (postgresql://user:pass@host:port/db). Unset: use the "
        "embedded PostgreSQL started by `ehb up` / `ehb demo`.",
    )
    metrics_port: int = Field(
        9400, ge=0, description="Port of the /metrics endpoint (0 disables it)."
    )
    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the /metrics endpoint binds to: loopback by default; 0.0.0.0 "
        "(as in docker-compose.yml) lets a Prometheus on another host scrape it.",
    )
    broker_storage: BrokerStorage = Field(
        BrokerStorage.DURABLE,
        description="Embedded broker only: durable keeps topics and committed offsets in "
        "SeaweedFS under EHB_DATA_DIR/objects, surviving a restart of any process or of the "
        "whole stack; memory keeps them in the broker's memory (faster; a broker restart "
        "loses every event not yet in PostgreSQL: tests and benchmarks).",
    )
    brokers: int = Field(
        1,
        ge=1,
        le=9,
        description="Embedded broker only: Tansu brokers sharing one store (durable "
        "storage); clients bootstrap to all of them (docs/embedded.md).",
    )
    data_dir: Path = Field(
        Path(".ehb"),
        description="Local state: embedded PostgreSQL data, broker logs, outboxes. Git-ignored.",
    )
    producer_id: str | None = Field(
        None,
        description="Identity of a producer process (ehb publish/simulate/gateway): its outbox "
        "is EHB_DATA_DIR/outbox/<id>.sqlite3, resent by the next producer with the same id. "
        "Unset: the command's name.",
    )
    outbox_synchronous: str = Field(
        "NORMAL",
        pattern="^(?i:NORMAL|FULL)$",
        description="SQLite synchronous mode of producer outboxes: NORMAL survives a crash "
        "of the producer, FULL also a power loss (an fsync per transaction).",
    )
    citizen_key_secret: SecretStr | None = Field(
        None,
        description="HMAC key of the pseudonymous citizen key. Development: generated once "
        "under EHB_DATA_DIR when unset. Production: required.",
    )
    worker_group: str = Field("ehb-worker", description="Consumer group / Faust app id of workers.")
    sink_group: str = Field("ehb-sink", description="Consumer group of the PostgreSQL sink.")
    sink_batch_size: int = Field(5000, ge=1, description="Max records per sink transaction.")
    sink_batch_timeout_s: float = Field(
        0.05, gt=0, description="Max wait to fill a sink batch before writing it."
    )
    worker_batch_size: int = Field(
        100, ge=1, description="Max input messages the worker handles per batch."
    )
    worker_instance_id: str | None = Field(
        None,
        description="Static group membership (group.instance.id) of a worker: a worker "
        "restarted with the same id takes its partitions back without a rebalance. Unique per "
        "worker; unset: dynamic membership. Apache Kafka only: Tansu stalls static members.",
    )
    worker_fetch_max_wait_ms: int = Field(
        25,
        ge=1,
        le=1500,
        description="Longest a worker's fetch waits for data (Faust "
        "hard-codes 1500 ms; Tansu holds fetches that long, adding latency at every hop).",
    )
    worker_fetch_max_kb: int = Field(
        1024,
        ge=1024,
        le=64 * 1024,
        description="Most KiB one fetch of a worker takes, from one partition and in all "
        "(aiokafka's max_partition_fetch_bytes and fetch_max_bytes). Under a backlog the "
        "consumer holds what it fetched and has not processed yet, up to about this much for "
        "each partition it reads: the worker's memory grows with it. Tansu ignores the "
        "per-partition size and shares the fetch's among partitions in order; a broker "
        "returns a first record batch larger than either (docs/operations.md).",
    )
    state_store: StateStore = Field(
        StateStore.ROCKSDB,
        description="Store of the worker's citizens table: rocksdb (on disk under "
        "EHB_STATE_STORE_DIR, rocksdict driver: memory bounded by the EHB_STATE_* sizes, a "
        "restart reads only the changelog written since) or memory (a dict, rebuilt from the "
        "whole changelog at every start; docs/state-store.md).",
    )
    state_key_format: StateKeyFormat = Field(
        StateKeyFormat.BINARY,
        description="Keys the worker writes to the citizens table's changelog and local store: "
        "binary (17 bytes a citizen; a JSON-keyed entry is replaced when its citizen is written) "
        "or json (34 bytes, as workers wrote them before issue 17). Both are always read. json "
        "only while workers of an older version share the group (a rolling upgrade: they cannot "
        "read binary keys); docs/state-store.md.",
    )
    state_store_dir: Path | None = Field(
        None,
        description="rocksdb: directory of the worker's table databases. Unset: "
        "EHB_DATA_DIR/tables/<worker group>/<EHB_WORKER_INSTANCE_ID, or the first "
        "worker-N that no running worker process holds>, so that workers on one host never "
        "share one (a partition database is locked by the worker that opened it) and a "
        "restarted worker finds its state again.",
    )
    table_standby_replicas: int = Field(
        1,
        ge=0,
        description="Standby copies of each partition of the citizens table that other workers "
        "keep current from its changelog (Faust's table_standby_replicas): a worker taking a "
        "dead one's partitions over from a current standby recovers only the changelog's newest "
        "records (docs/state-store.md).",
    )
    state_block_cache_mb: int = Field(
        16,
        ge=1,
        description="rocksdb: block cache of the worker process, in MiB, shared by every "
        "partition database it holds (Faust's default: 2 GiB for each). Reads it misses come "
        "from the operating system's page cache; raise it where memory allows.",
    )
    state_memtables_mb: int = Field(
        16,
        ge=1,
        description="rocksdb: write buffers (memtables) of the worker process, in MiB, shared "
        "by every partition database it holds (a RocksDB write-buffer manager).",
    )
    state_write_buffer_mb: int = Field(
        8, ge=1, description="rocksdb: size of one write buffer (memtable), in MiB."
    )
    state_max_write_buffers: int = Field(
        2, ge=1, description="rocksdb: write buffers of a partition database."
    )
    state_target_file_mb: int = Field(
        16, ge=1, description="rocksdb: target size of an SST file, in MiB."
    )
    state_max_open_files: int = Field(
        256, ge=16, description="rocksdb: open files of each partition database."
    )
    malloc_arenas: int = Field(
        2,
        ge=0,
        description="At most this many glibc malloc arenas in the worker (MALLOC_ARENA_MAX): "
        "its native threads (RocksDB, librdkafka) otherwise keep up to 8 per core, tens of MB "
        "each; 0 keeps glibc's default.",
    )
    gc_young_threshold: int = Field(
        50_000,
        ge=0,
        description="Allocations between two young-generation passes of "
        "Python's garbage collector in the worker and the sink (Python's default: 700). "
        "Higher spends less time collecting (the worker's stages in-process: a third less "
        "CPU per event) and keeps a few MB of cyclic garbage a little longer; 0 keeps "
        "Python's defaults.",
    )
    consumer_fetch_max_wait_ms: int = Field(
        25,
        ge=1,
        le=5000,
        description="Longest a fetch of the sink (and of the other "
        "confluent-kafka consumers: tail, replay, downstream clients) waits for data. Tansu "
        "holds a fetch that long even when data arrives, adding it to the latency; Apache "
        "Kafka answers at once, so a longer wait only spaces out idle polls.",
    )
    offset_hole_confirm_s: float = Field(
        60.0,
        ge=1,
        le=3600,
        description="Seconds a consumer (worker, sink) stays at a skipped offset before it "
        "asks the broker whether the skip is a hole in the log, which it then passes over: "
        "Tansu's durable engine leaves one where a broker died while writing a batch "
        "(docs/embedded.md). Longer than a produce request may take to land.",
    )
    worker_batch_timeout_s: float = Field(
        0.05, gt=0, description="Max wait to fill a worker batch."
    )
    dead_letter_original_max_bytes: int = Field(
        64 * 1024,
        ge=1024,
        le=512 * 1024,
        description="Most bytes of an input a dead letter "
        "(topic and table) keeps. A larger original is cut to this prefix, with its full "
        "length, its SHA-256 and original_truncated; the whole original stays readable at the "
        "dead letter's source topic, partition and offset while the topic retains it. At most "
        "512 KiB: a dead letter stays well below the producers' message.max.bytes (1,000,000).",
    )
    referral_window_days: float = Field(
        30.0,
        gt=0,
        description="A referral is completed when the patient's exam at the "
        "destination arrives within this many days (event time) of the letter.",
    )
    appointment_reminder_lead_hours: float = Field(
        24.0,
        ge=0,
        description="A reminder is emitted this long (event time) before the "
        "follow-up appointment.",
    )
    appointment_grace_days: float = Field(
        3.0,
        ge=0,
        description="An appointment is kept by an exam at its facility within this "
        "many days either side of the date; missed when the window has passed.",
    )
    allowed_lateness_hours: float = Field(
        48.0,
        ge=0,
        description="How late (event time) data may arrive and still count: the "
        "watermark is the event-time clock (aligned on the slowest input partition) minus "
        "this.",
    )
    closed_retention_days: float = Field(
        400.0,
        ge=0,
        description="How long (event time) the stateful stage remembers the ids "
        "of closed referrals and appointments, so a replay or re-send does not reopen them.",
    )
    partition_idle_s: float = Field(
        5.0,
        ge=0,
        description="An input partition with nothing left to process for this "
        "long stops holding back the event-time clock (docs/architecture.md, Time).",
    )
    registry_refresh_s: float = Field(
        30.0, gt=0, description="How often workers reload the facility registry from PostgreSQL."
    )
    reports_reconcile_s: float = Field(
        10.0,
        gt=0,
        description="How often the sink reconciles the facilities' daily reports "
        "with the episodes received (also soon after new reports or episodes).",
    )
    reports_grace_hours: float = Field(
        12.0,
        ge=0,
        description="A day has passed (a missing daily report makes its facility "
        "silent) this many hours after its end, Vietnam time.",
    )
    reports_window_days: int = Field(
        400,
        ge=1,
        description="Days of daily reports reconciled, counted back from the newest "
        "day seen; older days keep their last status.",
    )
    secrets_dir: Path | None = Field(
        None,
        description="Directory of secret files named like the settings "
        "(ehb_citizen_key_secret, ehb_database_url, ehb_kafka_sasl_password ...), e.g. "
        "/run/secrets. Any setting can also come from a file named by EHB_<SETTING>_FILE.",
    )
    lag_refresh_s: float = Field(
        5.0,
        gt=0,
        description="How often the sink reads the consumer groups' committed and end "
        "offsets for the kafka_consumergroup_lag metrics.",
    )
    console_host: str = Field(
        "127.0.0.1",
        description="Address the web console (`ehb console`) binds to: loopback by default; "
        "0.0.0.0 only behind a TLS-terminating proxy (docs/console.md).",
    )
    console_port: int = Field(8400, ge=1, le=65535, description="Port of the web console.")
    console_database_url: SecretStr | None = Field(
        None,
        description="PostgreSQL DSN of the console's login user (a member of the role "
        "ehb_console: read-only on the pipeline's tables, its own sessions and login "
        "attempts). Unset: EHB_DATABASE_URL. Either way the console's connections SET ROLE "
        "ehb_console.",
    )
    console_session_secret: SecretStr | None = Field(
        None,
        description="Key that signs the console's cookies (sessions, CSRF tokens). "
        "Development: generated once under EHB_DATA_DIR when unset. Production: required, "
        "at least 32 characters.",
    )
    console_session_hours: float = Field(
        8.0, gt=0, le=24 * 7, description="A console session ends this long after the login."
    )
    console_secure_cookies: bool | None = Field(
        None,
        description="Send the console's cookies over HTTPS only (Secure). Unset: on in "
        "production, off in development (http://127.0.0.1).",
    )
    console_login_attempts: int = Field(
        5,
        ge=1,
        description="Failed console logins allowed per account name and per client address "
        "within EHB_CONSOLE_LOGIN_WINDOW_S; more are refused (HTTP 429) without checking the "
        "password.",
    )
    console_login_window_s: float = Field(
        900.0, gt=0, description="The window of the console's login rate limit, in seconds."
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_safe(cls, value: str) -> str:
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        if not set(value) <= allowed:
            raise ValueError("may contain only letters, digits, '.', '_' and '-'")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Precedence: arguments, EHB_* variables, EHB_*_FILE files, EHB_SECRETS_DIR files."""
        import os

        sources: list[PydanticBaseSettingsSource] = [
            init_settings,
            env_settings,
            _FileVariables(settings_cls),
        ]
        secrets_dir = os.environ.get("EHB_SECRETS_DIR") or os.environ.get("ehb_secrets_dir")
        if secrets_dir and Path(secrets_dir).is_dir():
            sources.append(SecretsSettingsSource(settings_cls, secrets_dir=secrets_dir))
        return (*sources, dotenv_settings)

    @model_validator(mode="after")
    def _several_brokers_share_a_store(self) -> Settings:
        if self.brokers > 1 and self.broker_storage is BrokerStorage.MEMORY:
            raise ValueError(
                "EHB_BROKERS > 1 needs EHB_BROKER_STORAGE=durable: memory brokers share nothing"
            )
        return self

    @model_validator(mode="after")
    def _production_needs_explicit_services(self) -> Settings:
        if self.env is Environment.PRODUCTION:
            missing = [
                name
                for name, value in (
                    ("EHB_KAFKA_BOOTSTRAP", self.kafka_bootstrap),
                    ("EHB_DATABASE_URL", self.database_url),
                    ("EHB_CITIZEN_KEY_SECRET", self.citizen_key_secret),
                )
                if value is None
            ]
            if missing:
                raise ValueError(f"production mode requires {', '.join(missing)}")
            secret = self.citizen_key_secret
            if secret is not None and len(secret.get_secret_value()) < 32:
                raise ValueError("EHB_CITIZEN_KEY_SECRET must be at least 32 characters")
            self._refuse_placeholder_secrets()
        return self

    def _refuse_placeholder_secrets(self) -> None:
        """Production: no example or default secret, no SASL without credentials."""
        from urllib.parse import urlsplit

        checked = {
            "EHB_CITIZEN_KEY_SECRET": self.citizen_key_secret,
            "EHB_KAFKA_SASL_PASSWORD": self.kafka_sasl_password,
        }
        if self.database_url is not None:
            password = urlsplit(self.database_url.get_secret_value()).password
            if password is not None:
                checked["the password in EHB_DATABASE_URL"] = SecretStr(password)
        for name, value in checked.items():
            if value is not None and _is_placeholder(value.get_secret_value()):
                raise ValueError(
                    f"{name} is a placeholder or default value; production needs a real secret"
                )
        if self.kafka_security_protocol.upper().startswith("SASL") and (
            not self.kafka_sasl_username or self.kafka_sasl_password is None
        ):
            raise ValueError(
                "production mode with SASL requires EHB_KAFKA_SASL_USERNAME and "
                "EHB_KAFKA_SASL_PASSWORD (or their _FILE / EHB_SECRETS_DIR files)"
            )

    def topic(self, name: str) -> str:
        """Full topic name for a logical topic name (``examinations`` -> ``ehb.examinations``)."""
        return f"{self.topic_prefix}{name}"

    @cached_property
    def state_dir(self) -> Path:
        return self.data_dir.resolve()

    @cached_property
    def tables_dir(self) -> Path:
        """rocksdb: where this worker group's table directories live on this host (one per
        worker process: ``streams.state_store.claim_table_dir``)."""
        return self.state_dir / "tables" / self.worker_group

    def public_dict(self) -> dict[str, Any]:
        """Settings safe to print or log: secrets masked."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                value = "**********"
            out[name] = str(value) if isinstance(value, Path) else value
        return out


def get_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)
