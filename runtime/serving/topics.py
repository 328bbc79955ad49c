"""`fraudscore topics create`: the sidecar's topics, with the partitions, replication and
retention its recovery needs. Idempotent: topics that exist are reported, not changed, and
an existing topic with another partition count is refused before anything is created.

    config = TopicsConfig.from_sources({"bootstrap_servers": "127.0.0.1:9092", "input_topic": "tx-in", ...})
    plans = plan_topics(config, partitions=6, replication_factor=3)
    report = ensure_topics(config, plans)   # raises TopicConflict (2) or KafkaUnavailable (3)
    for line in report.lines():
        print(line)

Retention, by role (docs/sidecar.md#topics says why):

| role | retention | why |
|---|---|---|
| input, labels | 37 days + allowed lateness + 1 day (39 by default) | the terminal table reads both whole at start-up and customer windows are replayed from the input's first retained offset; the windows reach 37 days back |
| scores, alerts | 7 days | read by downstream consumers, never replayed by the sidecar |
| dead letters | 30 days | kept to investigate, fix and re-send |

| state, state index (`--state-topic`) | the input's | snapshots of raw mode's feature state: compacted (the latest snapshot per name), and deleted with the input they were made from, so card histories leave Kafka no later than the transactions do |
| terminal feed (`--state-topic`: STATE-feed) | 1 day | each input partition's decoded transactions, written by its owner for every instance's terminal table; a table further behind reads the input instead |

Every other topic is `cleanup.policy=delete`: the input is the source of truth, and
compacting it (one message a customer key) would drop the transactions the windows are
rebuilt from. The state topics are `compact,delete` with short segments, so the cleaner
soon drops snapshots that newer ones replaced.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fraudscore.errors import FraudscoreError, UsageError
from fraudscore.features.spec import BASELINE_SPEC, SECONDS_PER_DAY
from fraudscore.serving.sidecar.clients import KafkaUnavailable, connection_problem, quiet_repeats
from fraudscore.serving.sidecar.config import SECRET_MARKERS, SidecarConfig, read_sources, require
from fraudscore.serving.sidecar.state.feed import feed_topic
from fraudscore.serving.sidecar.state.snapshots import index_topic

DAY_MS = SECONDS_PER_DAY * 1000
OUTPUT_RETENTION_DAYS = 7  # scores and alerts: downstream reads them, the sidecar never does
DLQ_RETENTION_DAYS = 30  # dead letters: time to investigate, fix the producer and re-send
# The terminal feed is read from the terminal snapshot's positions (written every
# --snapshot-interval); where retention has taken what a table needs, it reads the input.
FEED_RETENTION_DAYS = 1
FEATURE_INPUT_RETENTION_DAYS = 7  # --input features: nothing is replayed from the input
# Kafka deletes by the message's timestamp, the windows count by TX_DATETIME, which may run
# up to a day ahead of it (later ones are refused as bad_time): a day more keeps them.
CLOCK_MARGIN_DAYS = 1
REQUIRED = ("bootstrap_servers", "input_topic", "output_topic", "alerts_topic", "dlq_topic")
STATE_SEGMENT_MS = 10 * 60 * 1000
STATE_SEGMENT_BYTES = 64 * 1024 * 1024


class TopicConflict(FraudscoreError):
    """An existing topic cannot serve as asked (another partition count), or the broker
    refused to create one (replication factor, authorisation, policy)."""

    exit_code = 2


@dataclass(frozen=True)
class TopicsConfig:
    """The part of the sidecar's settings that names and reaches its topics.

    Built from the same flags, FRAUDSCORE_* variables, --config file and librdkafka
    property sources as `fraudscore run` (config.read_sources), so one file serves both:

        >>> c = TopicsConfig.from_sources({"bootstrap_servers": "k:9092", "input_topic": "tx-in",
        ...     "output_topic": "tx-scores", "alerts_topic": "tx-alerts", "dlq_topic": "tx-dlq"}, environ={})
        >>> c.roles()["input"], c.labels_topic
        ('tx-in', '')
    """

    bootstrap_servers: str
    input_topic: str
    output_topic: str
    alerts_topic: str
    dlq_topic: str
    labels_topic: str = ""
    input_mode: str = ""
    allowed_lateness_s: int = 86_400
    startup_timeout_s: float = 15.0
    state_topic: str = ""
    kafka: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_sources(cls, flags: Mapping[str, Any], *, config_file: Path | None = None,
                     properties_file: Path | None = None, kafka_flags: list[str] | None = None,
                     environ: Mapping[str, str] | None = None) -> TopicsConfig:
        """Flags (None = not given) over the --config file; other `run` settings in the file
        (bundle, group_id, ...) are accepted and ignored, unknown ones refused as `run` does."""
        settings, kafka = read_sources(flags, config_file=config_file, properties_file=properties_file,
                                       kafka_flags=kafka_flags, environ=environ)
        known = {f.name for f in fields(SidecarConfig)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise UsageError(f"--config: unknown option(s) {', '.join(unknown)}; see fraudscore run --help")
        require(settings, REQUIRED)
        ours = {f.name for f in fields(cls)} - {"kafka"}
        config = cls(**{k: v for k, v in settings.items() if k in ours}, kafka=kafka)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise UsageError, saying how to fix it, for settings that cannot work together."""
        names = list(self.roles().values())
        if len(set(names)) < len(names):
            raise UsageError("input, output, alerts, dead-letter (and labels, state) topics must all be different topics")
        if self.input_mode not in ("", "raw", "features"):
            raise UsageError(f"--input must be raw or features, got {self.input_mode!r}")
        if self.allowed_lateness_s < 0:
            raise UsageError("--allowed-lateness must be >= 0 seconds")

    def roles(self) -> dict[str, str]:
        """Topic name by role, the labels and state topics only when configured."""
        out = {"input": self.input_topic}
        if self.labels_topic:
            out["labels"] = self.labels_topic
        out |= {"scores": self.output_topic, "alerts": self.alerts_topic, "dead letters": self.dlq_topic}
        if self.state_topic:
            out |= {"state": self.state_topic, "state index": index_topic(self.state_topic),
                    "terminal feed": feed_topic(self.state_topic)}
        return out

    def client_config(self) -> dict:
        """An admin client's settings: the bootstrap servers and every librdkafka property given."""
        import logging

        return {"bootstrap.servers": self.bootstrap_servers, "client.id": f"fraudscore-topics-{socket.gethostname()}",
                "logger": logging.getLogger("fraudscore.kafka")} | self.kafka


@dataclass(frozen=True)
class TopicPlan:
    """One topic as it should be created."""

    role: str
    name: str
    partitions: int
    replication_factor: int
    retention_ms: int

    @property
    def compacted(self) -> bool:
        return self.role in ("state", "state index")

    def topic_config(self) -> dict[str, str]:
        """The topic-level configuration it is created with."""
        out = {
            "cleanup.policy": "compact,delete" if self.compacted else "delete",
            "retention.ms": str(self.retention_ms),
            # With acks=all a write then survives the loss of one replica; a single-replica
            # topic (a development broker) can only ask for one.
            "min.insync.replicas": str(min(2, max(1, self.replication_factor - 1))),
        }
        if self.compacted:
            # Short segments and an eager cleaner: a replaced snapshot is dropped within
            # minutes, so the broker holds about one snapshot per name.
            out |= {"segment.ms": str(STATE_SEGMENT_MS), "segment.bytes": str(STATE_SEGMENT_BYTES),
                    "min.cleanable.dirty.ratio": "0.1"}
        return out


def replayed_retention_ms(allowed_lateness_s: int) -> int:
    """Retention the input and labels topics need in raw mode: the terminal windows' reach
    (37 days), the allowed lateness and a day of clock margin."""
    return (BASELINE_SPEC.terminal_reach_s + allowed_lateness_s) * 1000 + CLOCK_MARGIN_DAYS * DAY_MS


def plan_topics(config: TopicsConfig, partitions: int, replication_factor: int) -> list[TopicPlan]:
    """Every topic of `config` with `partitions`, `replication_factor` and its role's retention."""
    if partitions < 1 or replication_factor < 1:
        raise UsageError("--partitions and --replication-factor must be at least 1")
    replayed = replayed_retention_ms(config.allowed_lateness_s)
    retention = {
        "input": FEATURE_INPUT_RETENTION_DAYS * DAY_MS if config.input_mode == "features" else replayed,
        "labels": replayed,
        "scores": OUTPUT_RETENTION_DAYS * DAY_MS,
        "alerts": OUTPUT_RETENTION_DAYS * DAY_MS,
        "dead letters": DLQ_RETENTION_DAYS * DAY_MS,
    }
    retention["state"] = retention["state index"] = retention["input"]
    retention["terminal feed"] = FEED_RETENTION_DAYS * DAY_MS
    return [TopicPlan(role, name, 1 if role == "state index" else partitions, replication_factor, retention[role])
            for role, name in config.roles().items()]


@dataclass(frozen=True)
class TopicStatus:
    """What `ensure_topics` found or did for one topic."""

    plan: TopicPlan
    created: bool
    partitions: int
    replication_factor: int
    warnings: tuple[str, ...] = ()

    def line(self) -> str:
        verb = "created" if self.created else "exists "
        what = f"{self.partitions} partition{'s' * (self.partitions != 1)}, replication {self.replication_factor}"
        if self.created:
            what += f", retention {days(self.plan.retention_ms)}, cleanup.policy={self.plan.topic_config()['cleanup.policy']}"
        return f"{verb} {self.plan.name} ({self.plan.role}): {what}"


@dataclass(frozen=True)
class TopicsReport:
    """The outcome of one `ensure_topics` call, topic by topic."""

    bootstrap_servers: str
    topics: tuple[TopicStatus, ...]

    @property
    def created(self) -> list[str]:
        return [t.plan.name for t in self.topics if t.created]

    @property
    def existing(self) -> list[str]:
        return [t.plan.name for t in self.topics if not t.created]

    def lines(self) -> list[str]:
        out = []
        for status in self.topics:
            out.append(status.line())
            out += [f"  warning: {w}" for w in status.warnings]
        out.append(f"{len(self.created)} created, {len(self.existing)} already there, on {self.bootstrap_servers}")
        return out


def days(ms: int) -> str:
    """A retention in days, for people: "1 day", "39 days", "0.5 days"."""
    n = ms / DAY_MS
    return f"{n:.3g} day{'' if n == 1 else 's'}"


def existing_problems(plan: TopicPlan, partitions: int) -> list[str]:
    """Why an existing topic cannot serve as `plan` asks (an empty list if it can)."""
    if partitions == plan.partitions:
        return []
    hint = (" (changing a live input topic's partition count moves customers between partitions and their"
            " windows with them: create a new topic and migrate, docs/raw-transactions.md)") if plan.role == "input" else ""
    return [f"{plan.name} ({plan.role}) exists with {partitions} partition{'s' * (partitions != 1)}, "
            f"--partitions asks {plan.partitions}: pass --partitions {partitions} to keep it{hint}"]


def retention_warnings(plan: TopicPlan, configs: Mapping[str, str]) -> list[str]:
    """Warnings about an existing input or labels topic that would cut raw mode's recovery short."""
    if plan.role not in ("input", "labels") or plan.retention_ms < DAY_MS * 30:
        return []  # feature mode's input is never replayed: its retention is the operator's choice
    out = []
    retention = int(configs.get("retention.ms", "-1") or -1)
    if retention != -1 and retention < plan.retention_ms:
        out.append(f"retention.ms is {retention} ({days(retention)}); raw mode rebuilds its windows from "
                   f"this topic and needs {plan.retention_ms} ({days(plan.retention_ms)}): "
                   f"kafka-configs.sh --alter --entity-type topics --entity-name {plan.name} "
                   f"--add-config retention.ms={plan.retention_ms}")
    if "compact" in configs.get("cleanup.policy", "delete"):
        out.append("cleanup.policy includes compact, which drops earlier transactions of a key that raw mode's "
                   "windows are rebuilt from: set cleanup.policy=delete")
    return out


def ensure_topics(config: TopicsConfig, plans: list[TopicPlan]) -> TopicsReport:
    """Create the topics of `plans` that do not exist; report those that do.

    Refuses (TopicConflict) before creating anything when an existing topic has another
    partition count; warns when an existing input or labels topic keeps too little for
    raw mode's recovery. Raises KafkaUnavailable when the broker cannot be reached or
    refuses the credentials within `config.startup_timeout_s`.
    """
    admin, metadata = _admin_and_metadata(config)
    found = {p.name: metadata.topics[p.name] for p in plans
             if p.name in metadata.topics and metadata.topics[p.name].error is None}
    problems = [msg for p in plans if p.name in found for msg in existing_problems(p, len(found[p.name].partitions))]
    if problems:
        raise TopicConflict("; ".join(problems) + "; nothing was created")
    warnings = _retention_warnings(admin, config, [p for p in plans if p.name in found and p.role in ("input", "labels")])
    statuses: dict[str, TopicStatus] = {}
    for plan in plans:
        if plan.name in found:
            parts = found[plan.name].partitions
            replicas = len(next(iter(parts.values())).replicas) if parts else 0
            statuses[plan.name] = TopicStatus(plan, False, len(parts), replicas, tuple(warnings.get(plan.name, ())))
    missing = [p for p in plans if p.name not in found]
    if missing:
        statuses |= _create(admin, config, missing, len(metadata.brokers))
    return TopicsReport(config.bootstrap_servers, tuple(statuses[p.name] for p in plans))


def _admin_and_metadata(config: TopicsConfig):
    """An AdminClient of `config` and the cluster's topic metadata; UsageError for properties
    librdkafka refuses (secrets masked), KafkaUnavailable when the broker does not answer."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    errors: list = []
    quiet_repeats()  # librdkafka reports every failed connect; one line per kind every 10 s is enough
    try:
        admin = AdminClient(config.client_config() | {"error_cb": errors.append})
    except KafkaException as exc:
        detail = exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc)
        for key, value in config.kafka.items():  # a secret value is never echoed
            if value and any(m in key.lower() for m in SECRET_MARKERS):
                detail = detail.replace(value, "***")
        raise UsageError(f"librdkafka refused the Kafka properties (-X, FRAUDSCORE_KAFKA_*, "
                         f"--kafka-properties-file or [kafka] in --config): {detail}") from None
    try:
        return admin, admin.list_topics(timeout=config.startup_timeout_s)
    except KafkaException as exc:
        refused, problem = connection_problem(admin, errors, exc, config.bootstrap_servers, config.startup_timeout_s)
        hint = "" if refused else "; check --bootstrap-servers and -X security settings, or raise --startup-timeout"
        raise KafkaUnavailable(problem + hint) from None


def _retention_warnings(admin, config: TopicsConfig, checked: list[TopicPlan]) -> dict[str, list[str]]:
    """Per existing input or labels topic, what its configuration keeps too little of."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ConfigResource

    warnings: dict[str, list[str]] = {}
    if not checked:
        return warnings
    futures = admin.describe_configs([ConfigResource("topic", p.name) for p in checked])
    for resource, future in futures.items():
        plan = next(p for p in checked if p.name == resource.name)
        try:
            entries = future.result(config.startup_timeout_s)
        except KafkaException as exc:
            warnings[plan.name] = [f"could not read its configuration to check retention ({exc.args[0].str()})"]
            continue
        warnings[plan.name] = retention_warnings(plan, {k: e.value for k, e in entries.items() if e.value is not None})
    return warnings


def _create(admin, config: TopicsConfig, missing: list[TopicPlan], brokers: int) -> dict[str, TopicStatus]:
    """Create `missing`; the status of each. TopicConflict naming every refusal (and what was
    created anyway) when the broker refuses any."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewTopic

    futures = admin.create_topics(
        [NewTopic(p.name, num_partitions=p.partitions, replication_factor=p.replication_factor, config=p.topic_config())
         for p in missing], request_timeout=config.startup_timeout_s)
    statuses: dict[str, TopicStatus] = {}
    refused = []
    for plan in missing:
        try:
            futures[plan.name].result(config.startup_timeout_s + 5)
            statuses[plan.name] = TopicStatus(plan, True, plan.partitions, plan.replication_factor)
        except KafkaException as exc:
            error = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:  # created meanwhile by someone else
                statuses[plan.name] = TopicStatus(plan, False, plan.partitions, plan.replication_factor,
                                                  ("created by someone else meanwhile; its settings were not checked",))
            else:
                refused.append(f"{plan.name} ({plan.role}): {refusal_hint(error, plan, brokers)}")
    if refused:
        made = [p.name for p in missing if p.name in statuses and statuses[p.name].created]
        raise TopicConflict("could not create " + "; ".join(refused)
                            + (f" (created: {', '.join(made)}; run again once fixed)" if made else ""))
    return statuses


def refusal_hint(error: Any, plan: TopicPlan, brokers: int) -> str:
    """The broker's refusal of a topic, and what to do about it."""
    from confluent_kafka import KafkaError

    code = error.code()
    if code == KafkaError.INVALID_REPLICATION_FACTOR:
        return (f"replication factor {plan.replication_factor} needs that many brokers, the cluster has {brokers}; "
                f"pass --replication-factor {max(1, min(brokers, plan.replication_factor))}")
    if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
        return (f"not authorised to create topics ({error.str()}); ask the cluster's administrators to create it "
                f"with {plan.partitions} partitions, replication {plan.replication_factor} and "
                + ", ".join(f"{k}={v}" for k, v in plan.topic_config().items()))
    if code == KafkaError.POLICY_VIOLATION:
        return f"the cluster's topic policy refused it ({error.str()}); adjust --partitions/--replication-factor"
    return error.str()
