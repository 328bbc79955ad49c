"""The sidecar's one configuration object, built once from flags, FRAUDSCORE_* variables,
an optional TOML file and defaults, and frozen afterwards.

    config = SidecarConfig.from_sources(flags, config_file=Path("fraudscore.toml"))
    config.validate()

librdkafka properties come from `-X`, then FRAUDSCORE_KAFKA_<NAME> variables
(FRAUDSCORE_KAFKA_SASL_PASSWORD -> sasl.password), then a properties file, then the
[kafka] table of the TOML file. Secret values are never echoed, not even in errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraudscore.errors import UsageError

SECRET_MARKERS = ("password", "secret", "jaas", "key", "token", "credential")
TLS_PROTOCOLS = ("ssl", "sasl_ssl")
KAFKA_ENV_PREFIX = "FRAUDSCORE_KAFKA_"
ASSIGNMENT_STRATEGIES = ("cooperative-sticky", "range", "roundrobin")
REQUIRED = ("bundle", "bootstrap_servers", "input_topic", "output_topic", "alerts_topic", "dlq_topic", "group_id")
# TOML keys that are spelled like the flag rather than like the field.
_ALIASES = {"poll_timeout": "poll_timeout_s", "commit_interval": "commit_interval_s", "startup_timeout": "startup_timeout_s", "drain_timeout": "drain_timeout_s",
            "input": "input_mode", "allowed_lateness": "allowed_lateness_s", "snapshot_interval": "snapshot_interval_s"}


@dataclass(frozen=True)
class SidecarConfig:
    """Everything `fraudscore run` needs; see `fraudscore run --help` for each field."""

    bundle: Path
    bootstrap_servers: str
    input_topic: str
    output_topic: str
    alerts_topic: str
    dlq_topic: str
    group_id: str
    metrics_port: int = 9464
    metrics_host: str = "127.0.0.1"
    batch_size: int = 4096
    # Adaptive batching: a batch is what is queued when the loop asks, up to batch_size;
    # batch_wait_ms > 0 waits that long for more once a first message is there.
    batch_wait_ms: float = 0.0
    poll_timeout_s: float = 0.1  # idle: how long one wait for a first message lasts
    pipelining: bool = True  # batch k+1 is consumed and scored while batch k's outputs are acknowledged
    # Delivered offsets are committed once this long has passed since the last commit, or
    # sooner once batch_size delivered messages wait uncommitted (0: after every batch);
    # always on revoke and at exit. See Delivery.commit_due.
    commit_interval_s: float = 0.1
    device: str = "cpu"
    threads: int = 1
    workers: int = 1
    exactly_once: bool = False
    transactional_id: str = ""
    offset_reset: str = "earliest"
    wait: bool = False
    startup_timeout_s: float = 15.0
    drain_timeout_s: float = 30.0
    watch: bool = False
    watch_interval_s: float = 5.0
    # Shadow scoring: a second bundle scored on the same features; its score travels in each result
    # and in metrics by model version, and decides nothing. "" = none.
    challenger: str = ""
    max_message_bytes: int = 64 * 1024
    require_tls: bool = False
    # Raw mode: "" chooses raw when the bundle carries a feature specification, else features.
    input_mode: str = ""
    labels_topic: str = ""
    # Raw mode without --labels-topic is refused unless this says it is meant: every terminal
    # risk feature then reads 0 (the model's strongest inputs).
    no_labels: bool = False
    emit_features: bool = False
    allowed_lateness_s: int = 86_400
    # Raw mode go-live backfill: transactions whose event time is before this instant (a date or
    # a date and time, UTC) go into the feature state but get no result and no alert; "" = all scored.
    score_from: str = ""
    # Raw mode: /readyz stays 503 until the state of every assigned partition and the terminal
    # table cover what the windows reach back (30 and 7 + 30 days of event time).
    require_full_state: bool = False
    # Raw mode: snapshots of the feature state in this compacted topic (and NAME-index); "" = none,
    # every restore replays the input's whole retained history.
    state_topic: str = ""
    snapshot_interval_s: float = 60.0
    # Consumer group membership: the cooperative-sticky assignor moves only the partitions that
    # move; a static member id (group.instance.id) makes a restart inside the session timeout
    # no rebalance at all.
    assignment_strategy: str = "cooperative-sticky"
    group_instance_id: str = ""
    kafka: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any], *, config_file: Path | None = None,
                     properties_file: Path | None = None, kafka_flags: list[str] | None = None,
                     environ: Mapping[str, str] | None = None) -> SidecarConfig:
        """Flags (None = not given) over the TOML file over defaults; Kafka properties as above."""
        settings, kafka = read_sources(flags, config_file=config_file, properties_file=properties_file,
                                       kafka_flags=kafka_flags, environ=environ)
        if "bundle" in settings:
            settings["bundle"] = Path(settings["bundle"])
        require(settings, REQUIRED)
        try:
            return cls(**settings, kafka=kafka)
        except TypeError as exc:
            raise UsageError(f"--config: {exc}") from None

    @property
    def score_from_s(self) -> int | None:
        """--score-from as epoch seconds (None: every transaction is scored)."""
        if not self.score_from:
            return None
        from fraudscore.console import parse_instant

        return parse_instant(self.score_from, "--score-from")

    def validate(self) -> None:
        """Raise UsageError, saying how to fix it, for settings that cannot work together."""
        for name in REQUIRED[1:]:
            if not getattr(self, name):
                raise UsageError(f"--{name.replace('_', '-')} is required (flag, FRAUDSCORE_{name.upper()} or config file)")
        if self.offset_reset not in ("earliest", "latest"):
            raise UsageError("--offset-reset must be earliest or latest")
        if self.batch_size < 1 or self.threads < 1:
            raise UsageError("--batch-size and --threads must be positive")
        if not 0 <= self.batch_wait_ms <= 10_000:
            raise UsageError(f"--batch-wait-ms must be from 0 to 10000, got {self.batch_wait_ms:g} "
                             "(0, the default, takes what is queued without waiting)")
        if not self.drain_timeout_s > 0 or not self.startup_timeout_s > 0:
            raise UsageError(f"--drain-timeout and --startup-timeout must be above 0 seconds, got "
                             f"{self.drain_timeout_s:g} and {self.startup_timeout_s:g}")
        if not 0 < self.poll_timeout_s <= 10:
            raise UsageError(f"--poll-timeout must be above 0 and at most 10 seconds, got {self.poll_timeout_s:g}")
        if not 0 <= self.commit_interval_s <= 60:
            raise UsageError(f"--commit-interval must be from 0 to 60 seconds, got {self.commit_interval_s:g} "
                             "(0 commits after every batch)")
        if not 1 <= self.workers <= 256:
            raise UsageError(f"--workers must be from 1 to 256, got {self.workers} (one a core is the usual choice)")
        if self.workers > 1 and self.metrics_port and self.metrics_port + self.workers > 65535:
            raise UsageError(f"--workers {self.workers} need ports {self.metrics_port}..{self.metrics_port + self.workers}: "
                             "lower --metrics-port")
        if len(set(self.topics)) < len(self.topics):
            raise UsageError("input, output, alerts, dead-letter (and labels, state) topics must all be different topics")
        if self.input_mode not in ("", "raw", "features"):
            raise UsageError(f"--input must be raw or features, got {self.input_mode!r}")
        if self.allowed_lateness_s < 0:
            raise UsageError("--allowed-lateness must be >= 0 seconds")
        if self.score_from:
            self.score_from_s  # noqa: B018 (parsed now: a bad value stops the start with its fix)
        if not 1 <= self.snapshot_interval_s <= 86_400:
            raise UsageError(f"--snapshot-interval must be from 1 to 86400 seconds, got {self.snapshot_interval_s:g}")
        if self.assignment_strategy not in ASSIGNMENT_STRATEGIES:
            raise UsageError(f"--assignment-strategy must be one of {', '.join(ASSIGNMENT_STRATEGIES)}, "
                             f"got {self.assignment_strategy!r}")
        protocol = self.kafka.get("security.protocol", "plaintext").lower()
        if self.require_tls:
            if protocol not in TLS_PROTOCOLS:
                raise UsageError(
                    f"--require-tls: security.protocol is {protocol!r}, which sends transactions (and any "
                    "credentials) in plaintext; refusing to start. Set -X security.protocol=SASL_SSL (or SSL) "
                    "and -X ssl.ca.location=CA.pem")
            if (self.kafka.get("enable.ssl.certificate.verification", "true").lower() in ("false", "0")
                    or self.kafka.get("ssl.endpoint.identification.algorithm", "https").lower() == "none"):
                raise UsageError("--require-tls: certificate or host name verification is switched off "
                                 "(enable.ssl.certificate.verification / ssl.endpoint.identification.algorithm); "
                                 "refusing a TLS connection that anyone in the middle could answer")

    @property
    def plaintext_credentials(self) -> bool:
        """SASL credentials configured over an unencrypted connection."""
        return self.kafka.get("security.protocol", "plaintext").lower() == "sasl_plaintext"

    @property
    def topics(self) -> tuple[str, ...]:
        """Every topic the sidecar reads or writes."""
        labels = (self.labels_topic,) if self.labels_topic else ()
        state = (self.state_topic, f"{self.state_topic}-index") if self.state_topic else ()
        return (self.input_topic, self.output_topic, self.alerts_topic, self.dlq_topic) + labels + state

    def redacted_kafka(self) -> dict[str, str]:
        return {k: ("***" if any(m in k.lower() for m in SECRET_MARKERS) else v) for k, v in self.kafka.items()}


def require(settings: Mapping[str, Any], names: Iterable[str]) -> None:
    """UsageError naming every one of `names` that `settings` lacks, and where it may come from."""
    missing = [k for k in names if not settings.get(k)]
    if missing:
        raise UsageError("missing " + ", ".join("--" + k.replace("_", "-") for k in missing)
                         + " (flags, FRAUDSCORE_* variables or --config)")


def read_sources(flags: Mapping[str, Any], *, config_file: Path | None = None, properties_file: Path | None = None,
                 kafka_flags: list[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(settings, librdkafka properties) in the sidecar's precedence: flags (None = not given)
    over the TOML file; -X over FRAUDSCORE_KAFKA_* over the properties file over [kafka].

    Shared by `fraudscore run` (SidecarConfig.from_sources) and `fraudscore topics create`,
    so both read the same flags, variables and files the same way."""
    settings = read_config_file(config_file) if config_file else {}
    kafka = {str(k): str(v) for k, v in settings.pop("kafka", {}).items()}
    if properties_file:
        kafka.update(read_properties_file(properties_file))
    kafka.update(kafka_environment(os.environ if environ is None else environ))
    kafka.update(parse_kafka_flags(kafka_flags or []))
    settings.update({k: v for k, v in flags.items() if v is not None})
    return settings, kafka


def parse_kafka_flags(items: list[str]) -> dict[str, str]:
    """`-X key=value` flags as librdkafka properties; an error names the flag's position, never its value."""
    out = {}
    for n, item in enumerate(items, 1):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():  # the value is not echoed: it may be a secret
            raise UsageError(f"-X number {n} is not key=value (e.g. -X security.protocol=SASL_SSL)")
        out[key.strip()] = value
    return out


def kafka_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """FRAUDSCORE_KAFKA_SASL_PASSWORD=... -> {"sasl.password": ...} (the file option's own variable excepted)."""
    return {
        name[len(KAFKA_ENV_PREFIX):].lower().replace("_", "."): value
        for name, value in environ.items()
        if name.startswith(KAFKA_ENV_PREFIX) and name != "FRAUDSCORE_KAFKA_PROPERTIES_FILE" and len(name) > len(KAFKA_ENV_PREFIX)
    }


def read_properties_file(path: Path) -> dict[str, str]:
    """key=value lines; blank lines and lines starting with # or ! are skipped. Errors name the
    line, never its content (it may hold a password)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UsageError(f"--kafka-properties-file {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--kafka-properties-file {path}: cannot read it ({type(exc).__name__})") from None
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#!":
            continue
        key, sep, value = stripped.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--kafka-properties-file {path}: line {number} is not key=value")
        out[key.strip()] = value.strip()
    return out


def read_config_file(path: Path) -> dict:
    """The TOML file's options, keys normalised to field names."""
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"--config {path}: not valid TOML ({exc})") from None
    return {_ALIASES.get(k.replace("-", "_"), k.replace("-", "_")): v for k, v in data.items()}
