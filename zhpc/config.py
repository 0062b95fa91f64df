"""Configuration: YAML files validated by pydantic, with named environments.

Search order: ``--config FILE``, ``$ZHPC_CONFIG``, ``./zhpc.yaml``,
``~/.config/zhpc/config.yaml``; with none, the embedded default (SQLite broker
and local process backend, state under ``$ZHPC_HOME``). An environment
(``-e NAME`` or ``$ZHPC_ENV``) is a partial configuration deep-merged over the
base before validation, like Zocalo's ``--environment``.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from zhpc import config_checks, plugins
from zhpc.errors import ConfigError
from zhpc.masking import mask_secrets, mask_url

DEFAULT_DELIVERY_LIMIT = 5


def zhpc_home() -> Path:
    """Where zhpc keeps local state (embedded broker, spool, local jobs)."""
    return Path(os.environ.get("ZHPC_HOME") or Path.home() / ".local/share/zhpc").expanduser()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _bounded_numbers(cls, value: Any) -> Any:
        """Free values too (``parameters``): no NaN, no infinity, no integer beyond 64 bits."""
        return config_checks.check_bounded_numbers(value)


class TLSConfig(_Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify: bool = True


def _one_of(words: list[str]) -> str:
    """``a``, ``a or b``, ``a, b or c``: as pydantic lists a Literal's values."""
    return " or ".join(filter(None, [", ".join(words[:-1]), words[-1]])) if words else "nothing"


class BrokerConfig(_Section):
    """``url`` is ``amqp://``, ``amqps://`` or ``sqlite:///abs/path``: a scheme that an
    installed transport serves (the ``zhpc.transports`` entry points)."""

    url: str = Field("", repr=False)
    #: The nodes of a RabbitMQ cluster (``host:port``), tried in order on every (re)connect,
    #: with ``url``'s scheme, user, password and vhost. Empty: ``url``'s host alone. A list
    #: of URLs as ``url`` fills this in (see :func:`config_checks.split_broker_urls`).
    hosts: list[str] = []
    #: ``x-quorum-initial-group-size`` of new quorum queues. None: the number of nodes
    #: listed, at most 3 (and the broker's own default with one node listed).
    quorum_group_size: int | None = Field(None, ge=1)
    #: Seconds a publish the broker nacked is retried on a fresh channel before its commit
    #: fails (a cluster that lost a node nacks for a while); 0: fail at the first nack.
    nack_retry_budget: float = Field(30.0, ge=0)
    password_file: Path | None = None
    delivery_limit: int = Field(DEFAULT_DELIVERY_LIMIT, ge=0)
    heartbeat: int = Field(60, ge=0)
    connection_attempts: int = Field(10, ge=1)
    retry_delay: float = Field(1.0, ge=0)
    #: Seconds a publish waits for the broker's confirm, and RabbitMQ may block the
    #: connection (memory or disk alarm) before it is dropped: then the caller fails
    #: (``zhpc go`` spools) instead of hanging.
    confirm_timeout: float = Field(60.0, gt=0, le=86400)
    tls: TLSConfig = TLSConfig()
    #: RabbitMQ's management HTTP API (``zhpc scale`` reads unacked counts there). None:
    #: derived from ``url`` (same host and credentials, port 15672); "": do not use it.
    management_url: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _url_list(cls, data: Any) -> Any:
        """``url: [amqp://a:5672/, amqp://b:5672/]`` means ``url`` a, ``hosts`` [a, b]."""
        if isinstance(data, dict) and isinstance(data.get("url"), list):
            if data.get("hosts"):
                raise ValueError("give the nodes either as a list in broker.url or in "
                                 "broker.hosts, not both")
            data = dict(data)
            data["url"], data["hosts"] = config_checks.split_broker_urls(data["url"])
        return data

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: str) -> str:
        return config_checks.check_broker_url(url, plugins.names(plugins.TRANSPORTS))

    @field_validator("hosts")
    @classmethod
    def _host_ports(cls, hosts: list[str]) -> list[str]:
        return [config_checks.check_host_port(host) for host in hosts]

    def connection_urls(self) -> list[str]:
        """One URL per node (password included; never log these), in the order to try."""
        url = self.connection_url()
        return [config_checks.with_host(url, host) for host in self.hosts] or [url]

    def display_urls(self) -> list[str]:
        """:meth:`connection_urls` with any password replaced by ``***``: safe to print."""
        url = self.display_url()
        return [config_checks.with_host(url, host) for host in self.hosts] or [url]

    def quorum_initial_group_size(self) -> int | None:
        """The replication factor to ask for, or None for the broker's default."""
        if self.quorum_group_size is not None:
            return self.quorum_group_size
        return min(len(self.hosts), 3) if len(self.hosts) > 1 else None

    @field_validator("management_url")
    @classmethod
    def _http(cls, url: str | None) -> str | None:
        if url and urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("must start with http:// or https:// (or be empty to disable)")
        return url

    @property
    def scheme(self) -> str:
        return urlsplit(self.resolved_url_without_password()).scheme

    def resolved_url_without_password(self) -> str:
        return self.url or f"sqlite://{zhpc_home() / 'broker.sqlite'}"

    def password(self) -> str | None:
        """The broker password: from ``password_file`` (mode 0600 only), else from the URL."""
        if self.password_file is not None:
            return read_secret_file(self.password_file)
        parts = urlsplit(self.url)
        return unquote(parts.password) if parts.password else None

    def connection_url(self) -> str:
        """The URL to connect with, password included. Never log this."""
        url = self.resolved_url_without_password()
        parts = urlsplit(url)
        password = self.password()
        if parts.scheme == "sqlite" or password is None:
            return url
        user = quote(unquote(parts.username or "guest"), safe="")
        host = parts.hostname or "localhost"
        host = f"[{host}]" if ":" in host else host  # an IPv6 address keeps its brackets
        port = f":{parts.port}" if parts.port else ""
        netloc = f"{user}:{quote(password, safe='')}@{host}{port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def display_url(self) -> str:
        """The URL with any password replaced by ``***``: safe to print."""
        return mask_url(self.resolved_url_without_password())

    def sqlite_path(self) -> Path:
        parts = urlsplit(self.resolved_url_without_password())
        if parts.scheme != "sqlite":
            raise ConfigError(f"broker.url is not a sqlite:/// URL: {self.display_url()}")
        # sqlite:///abs/path and SQLAlchemy's sqlite:////abs/path both mean /abs/path;
        # sqlite://rel/path is relative to the working directory.
        path = unquote(parts.netloc + parts.path)
        path = path[1:] if path.startswith("//") else path
        if not path:
            raise ConfigError("broker.url sqlite:/// needs a file path")
        return Path(path).expanduser()


class SSHConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    key_file: Path | None = None
    known_hosts: Path | None = None
    strict_host_key_checking: bool = True
    timeout: float = Field(30.0, gt=0)


class SlurmRestConfig(_Section):
    """``cluster.slurmrestd``: where slurmrestd listens and whose token to send."""

    url: str = "http://127.0.0.1:6820"
    #: The token's user (X-SLURM-USER-NAME); None: the user running zhpc.
    user: str | None = None
    #: A file holding the JWT, readable by its owner only; None: the SLURM_JWT variable.
    token_file: Path | None = None
    api_version: str = Field("v0.0.38", pattern=r"^v\d+\.\d+\.\d+$")


class DRMAAConfig(_Section):
    """``cluster.drmaa``: the DRMAA library and Grid Engine queue."""

    #: libdrmaa.so; None: DRMAA_LIBRARY_PATH, or Debian's Grid Engine library.
    library: Path | None = None
    #: Grid Engine queue (``-q``); None: the scheduler's choice. cluster.partition also sets it.
    queue: str | None = None
    #: Extra qsub options (DRMAA's native specification), one argument per item.
    native_args: list[str] = []


class ClusterConfig(_Section):
    #: An installed backend (the ``zhpc.clusters`` entry points): local, slurm, ssh...
    backend: str = "local"
    partition: str | None = None
    account: str | None = None
    default_time: str = "01:00:00"
    extra_sbatch_args: list[str] = []
    command_timeout: float = Field(30.0, gt=0)
    #: Where job scripts, recipe-wrapper files and job output go (shared filesystem on a cluster).
    workdir: Path | None = None
    ssh: SSHConfig = SSHConfig()
    slurmrestd: SlurmRestConfig = SlurmRestConfig()
    drmaa: DRMAAConfig = DRMAAConfig()

    @field_validator("backend", mode="before")
    @classmethod
    def _known_backend(cls, backend: Any) -> Any:
        names = plugins.names(plugins.CLUSTERS)
        if backend not in names:
            expected = _one_of([repr(name) for name in names])
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": expected})
        return backend

    @field_validator("default_time")
    @classmethod
    def _time_limit(cls, value: str) -> str | None:
        return config_checks.check_time_limit(value)

    def job_workdir(self) -> Path:
        return (self.workdir or zhpc_home() / "jobs").expanduser()


class RecipesConfig(_Section):
    #: Directory of ``*.json``/``*.yaml`` recipes; None means the examples shipped with zhpc.
    directory: Path | None = None

    @field_validator("directory")
    @classmethod
    def _existing(cls, path: Path | None) -> Path | None:
        return config_checks.check_existing_directory(path)


class StagingConfig(_Section):
    #: Only files under these roots may be staged into or out of a job.
    allowed_roots: list[Path] = []

    @field_validator("allowed_roots", mode="before")
    @classmethod
    def _absolute_roots(cls, roots: Any) -> Any:
        return config_checks.check_allowed_roots(roots)


class ServiceConfig(_Section):
    queue: str | None = None
    prefetch: int = Field(100, ge=1, le=65535)  # AMQP prefetch-count is 16 bits
    max_runtime: float | None = Field(None, gt=0)
    idle_timeout: float | None = Field(None, gt=0)
    heartbeat_interval: float = Field(30.0, gt=0)
    #: After a drain signal, how long the message in progress may still run before it is
    #: handed back. Keep it below the scheduler's KillWait (Slurm's default: 30 s).
    drain_grace: float = Field(10.0, ge=0)
    #: Stop this long before the job's wall-clock end, leaving time to hand back and exit.
    end_margin: float = Field(15.0, ge=0)
    #: Hand-backs (drains) after which a message is dead-lettered instead: one that never
    #: fits the time a job has left must not bounce between jobs forever.
    max_handbacks: int = Field(20, ge=1)
    #: Seconds between looks at the queue's retry lane while messages keep coming.
    retry_interval: float = Field(1.0, gt=0)
    #: Free parameters a service reads for itself.
    parameters: dict[str, Any] = {}


class ScalerConfig(_Section):
    """How ``zhpc scale`` sizes one service's job arrays (docs/scaling.md)."""

    min_jobs: int = Field(0, ge=0)
    max_jobs: int = Field(20, ge=0)
    #: Messages one job is expected to handle; desired jobs = ceil(work / this).
    messages_per_job: int = Field(100, ge=1)
    #: Instead: drain the backlog in this many seconds at the measured rate per job
    #: (messages_per_job still applies while no rate is known).
    target_drain_s: float | None = Field(None, gt=0)
    #: Never more than this many of the service's jobs PENDING.
    max_pending: int = Field(5, ge=1)
    #: A job PENDING longer than this (seconds) is reported (and cancelled when not needed).
    pending_timeout: float = Field(600.0, gt=0)
    #: Seconds after a submission before the next one, or before its jobs may be cancelled.
    cooldown: float = Field(30.0, ge=0)
    #: Job shape: wall-clock limit (default cluster.default_time), partition, cpus, memory.
    time: str | None = None
    partition: str | None = None
    cpus: int | None = Field(None, ge=1)
    memory: str | None = None
    #: At most this many tasks in one array submission.
    array_max: int = Field(100, ge=1)
    #: Seconds between daemon cycles.
    interval: float = Field(60.0, gt=0)
    #: Stop submitting after this many job failures in a row ("crash-looping service").
    crash_limit: int = Field(3, ge=1)
    #: A job that ends with a non-zero status within this many seconds of starting failed.
    crash_window: float = Field(10.0, gt=0)

    @field_validator("memory")
    @classmethod
    def _slurm_memory(cls, memory: str | None) -> str | None:
        if memory is not None and not re.fullmatch(r"[1-9]\d*[KMGT]?", memory.strip()):
            raise ValueError(f"{memory!r} is not a Slurm memory size such as 500M or 4G")
        return memory

    @field_validator("time")
    @classmethod
    def _time_limit(cls, value: str | None) -> str | None:
        return config_checks.check_time_limit(value)

    @field_validator("max_jobs")
    @classmethod
    def _not_below_min(cls, max_jobs: int, info: ValidationInfo) -> int:
        """On max_jobs, so the one-line error names the key to change."""
        min_jobs = info.data.get("min_jobs")
        if min_jobs is not None:
            config_checks.check_job_counts(min_jobs, max_jobs)
        return max_jobs


class QuarantineConfig(_Section):
    """Where Schlockmeister and ``zhpc dlq`` keep dead-lettered messages (docs/dead-letters.md)."""

    #: ``sqlite:///path`` or ``postgresql://user@host/db``; empty: $ZHPC_HOME/quarantine.sqlite.
    url: str = ""
    #: The PostgreSQL password (mode 0600), instead of one in the URL.
    password_file: Path | None = None
    #: Dead-letter queues (``dlq.X``, or work queues ``X``) to watch besides those found.
    queues: list[str] = []
    #: Look for dead-letter queues (broker listing, management API, ``services:``); off: only
    #: ``queues`` are watched.
    discover: bool = True
    #: RabbitMQ management API to list queues; None: the broker's host on port 15672; "": off.
    management_url: str | None = None
    #: Seconds between two looks for new dead-letter queues.
    rescan_interval: float = Field(30.0, gt=0)
    #: Queue that gets a short JSON note per quarantined message; "": none.
    notify_queue: str = "zhpc.quarantine"

    @field_validator("url")
    @classmethod
    def _known_store(cls, url: str) -> str:
        if url and urlsplit(url).scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return url


class EventsConfig(_Section):
    """Step events (docs/observability.md): broadcast on ``zhpc.events``, kept by the recorder."""

    #: Services and ``zhpc wrap`` emit events; off: nothing is sent.
    enabled: bool = True
    #: Events held in memory while the broker is slow; beyond this they are dropped.
    buffer: int = Field(10_000, ge=1)
    #: The recorder's store: ``sqlite:///path`` or ``postgresql://...``; empty:
    #: $ZHPC_HOME/events.sqlite.
    url: str = ""
    #: The PostgreSQL password (mode 0600), instead of one in the URL.
    password_file: Path | None = None
    #: Days the recorder keeps events; older ones are deleted.
    retention_days: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _known_store(cls, url: str) -> str:
        if url and urlsplit(url).scheme not in ("sqlite", "postgresql", "postgres"):
            raise ValueError("must start with sqlite:/// or postgresql://")
        return url


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"
    format: Literal["text", "json"] = "text"
    #: Also send log records to Graylog: ``udp://host:port`` (GELF, needs graypy).
    gelf: str = ""

    @field_validator("gelf")
    @classmethod
    def _gelf_url(cls, url: str) -> str:
        if url and (urlsplit(url).scheme not in ("udp", "tcp") or not urlsplit(url).hostname):
            raise ValueError("must be udp://host:port or tcp://host:port")
        return url


class LimitsConfig(_Section):
    """Bounds on what one request may make the Dispatcher build (docs/recipes.md).

    A request over a bound is dead-lettered with the reason (``zhpc go`` refuses it),
    so a 200-byte request cannot make the Dispatcher build gigabytes.
    """

    #: Longest string a parameter substitution may produce, and the widest format field.
    max_substituted_chars: int = Field(1_000_000, ge=1, le=2**31)
    #: Most ``start`` entries (start messages) one recipe may have.
    max_start_messages: int = Field(1000, ge=1, le=1_000_000)
    #: Largest single message body a request or a start message may have, in bytes.
    max_message_bytes: int = Field(16 * 2**20, ge=1024, le=2**31)
    #: Largest total of all start messages of one request, in bytes.
    max_dispatch_bytes: int = Field(64 * 2**20, ge=1024, le=2**34)


class Config(_Section):
    broker: BrokerConfig = BrokerConfig()
    cluster: ClusterConfig = ClusterConfig()
    recipes: RecipesConfig = RecipesConfig()
    staging: StagingConfig = StagingConfig()
    services: dict[str, ServiceConfig] = {}
    scaler: dict[str, ScalerConfig] = {}
    logging: LoggingConfig = LoggingConfig()
    quarantine: QuarantineConfig = QuarantineConfig()
    limits: LimitsConfig = LimitsConfig()
    events: EventsConfig = EventsConfig()
    #: Named partial configurations, overlaid by ``-e NAME``; not part of the result.
    environments: dict[str, dict[str, Any]] = {}

    #: Where this configuration came from (None: the embedded default); not a YAML key.
    source: Path | None = Field(None, exclude=True)
    environment: str | None = Field(None, exclude=True)

    def service(self, name: str) -> ServiceConfig:
        return self.services.get(name) or ServiceConfig()

    def scaler_for(self, name: str) -> ScalerConfig:
        return self.scaler.get(name) or ScalerConfig()


def read_secret_file(path: Path) -> str:
    """Read a secret, refusing a file that group or others may read or write."""
    path = path.expanduser()
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"password file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"password file {path} has mode {stat.S_IMODE(mode):04o}; "
            "it must be readable by its owner only (chmod 600)"
        )
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"password file {path}: cannot read: {exc}") from None


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The configuration file to use, following the documented search order."""
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"configuration file {path} does not exist")
        return path
    env = os.environ.get("ZHPC_CONFIG")
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ConfigError(f"configuration file {path} (from ZHPC_CONFIG) does not exist")
        return path
    for candidate in (Path("zhpc.yaml"), Path.home() / ".config/zhpc/config.yaml"):
        if candidate.is_file():
            return candidate.resolve()
    return None


def _deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: dict[str, Any]) -> str:
    path = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{path}: unknown key"
    return f"{path}: {error['msg']}"


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader whose too-long integers are YAML errors with a line, not a traceback."""

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:
            raise yaml.constructor.ConstructorError(
                None, None, f"integer with {len(str(node.value))} digits is too large",
                node.start_mark) from None


_ConfigLoader.add_constructor("tag:yaml.org,2002:int", _ConfigLoader.construct_yaml_int)


def parse_config(
    data: Any, *, source: Path | None = None, environment: str | None = None
) -> Config:
    """Validate already-parsed YAML, overlaying ``environment`` if given."""
    where = str(source) if source else "configuration"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of sections")
    if environment:
        environments = data.get("environments") or {}
        if not isinstance(environments, dict) or environment not in environments:
            known = ", ".join(sorted(environments)) if isinstance(environments, dict) else ""
            raise ConfigError(
                f"{where}: environment {environment!r} is not defined"
                + (f" (known: {known})" if known else "")
            )
        overlay = environments[environment]
        if not isinstance(overlay, dict):
            raise ConfigError(f"{where}: environments.{environment}: must be a mapping")
        data = _deep_merge(data, overlay)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(_describe(err) for err in exc.errors())
        raise ConfigError(f"{where}: {problems}") from None
    config.source = source
    config.environment = environment
    return config


def load_config(
    path: str | os.PathLike[str] | None = None, environment: str | None = None
) -> Config:
    """Find, read and validate the configuration (the embedded default if there is none)."""
    environment = environment or os.environ.get("ZHPC_ENV") or None
    source = find_config_file(path)
    if source is None:
        if environment:
            raise ConfigError(
                f"environment {environment!r} requested but no configuration file was found"
            )
        return Config()
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    import yaml  # only where a file is read: the embedded default needs no YAML parser

    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    config = parse_config(data, source=source, environment=environment)
    from zhpc.logs import apply_config

    apply_config(config.logging.level, config.logging.format, config.logging.gelf)
    if config.broker.password_file is not None:
        config.broker.password()  # fail early on a world-readable password file
    return config


def masked_dump(config: Config) -> dict[str, Any]:
    """The effective configuration as plain data, with every secret masked."""
    data = mask_secrets(config.model_dump(mode="json", exclude={"environments"}))
    data["broker"]["url"] = config.broker.display_url()
    data["quarantine"]["url"] = mask_url(config.quarantine.url)
    if config.broker.management_url:
        data["broker"]["management_url"] = mask_url(config.broker.management_url)
    return data
