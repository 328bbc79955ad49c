"""What the terminal feed saves: a terminal table read from the input against one read from
the feed, the same transactions, one broker.

    python -m fraudscore.bench.terminal_feed --bootstrap-servers 127.0.0.1:9092 \\
        --customers 5000 --terminals 10000 --days 40 --partitions 2 --json feed.json

One run, on fresh topics: a simulated stream and its confirmations replayed to Kafka (not
timed); the feed written from the input as owners write it (batches of --batch-size, one
record per partition and batch: the owners' extra cost per transaction is reported); then
a fresh terminal table (the sidecar's `TerminalTable`) reads everything, once from the
input and once from the feed, in one process, alternating --repeats times: wall seconds,
CPU seconds of the process (the client's threads included), bytes fetched, and whether the
two tables answer every transaction's terminal features alike.

Exit codes: 0 done (tables equal), 1 the tables differ or a read did not finish, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import numpy as np


def _fresh_topics(bootstrap: str, partitions: int) -> dict[str, str]:
    from confluent_kafka.admin import AdminClient, NewTopic

    from fraudscore.serving.sidecar.state.feed import feed_topic

    run = uuid.uuid4().hex[:8]
    topics = {"in": f"feed-bench-in-{run}", "labels": f"feed-bench-labels-{run}", "state": f"feed-bench-state-{run}"}
    topics["feed"] = feed_topic(topics["state"])
    admin = AdminClient({"bootstrap.servers": bootstrap})
    wanted = [NewTopic(topics["in"], partitions, 1), NewTopic(topics["labels"], 1, 1), NewTopic(topics["feed"], partitions, 1)]
    for future in admin.create_topics(wanted).values():
        future.result(30)
    return topics


def _write_feed(config, topics: dict, partitions: int, batch_size: int) -> dict:
    """Read the input as owners do and write its feed; bytes and seconds of the owners' part."""
    from confluent_kafka import Consumer, TopicPartition

    from fraudscore.serving.metrics import SidecarMetrics
    from fraudscore.serving.sidecar.state.feed import FeedWriter
    from fraudscore.serving.transactions import decode_transactions

    writer = FeedWriter(config, SidecarMetrics(), partitions=partitions)
    sizes = []
    produce = writer._produce
    writer._produce = lambda partition, value: (sizes.append(len(value)), produce(partition, value))
    reader = Consumer({"bootstrap.servers": config.bootstrap_servers, "group.id": f"feed-bench-{uuid.uuid4().hex[:6]}",
                       "enable.auto.commit": False})
    highs = {p: reader.get_watermark_offsets(TopicPartition(topics["in"], p), timeout=10)[1] for p in range(partitions)}
    reader.assign([TopicPartition(topics["in"], p, 0) for p in range(partitions)])
    done, publish_s, n = dict.fromkeys(highs, 0), 0.0, 0
    while any(done[p] < highs[p] for p in highs):
        messages = [m for m in reader.consume(batch_size, timeout=1) if m.error() is None]
        if not messages:
            continue
        raw = decode_transactions([m.value() for m in messages], timestamps_ms=np.array([m.timestamp()[1] for m in messages]))
        parts = np.array([m.partition() for m in messages], np.int64)
        offsets = np.array([m.offset() for m in messages], np.int64)
        t0 = time.perf_counter()
        writer.publish(parts, offsets, parts[raw.index], offsets[raw.index], raw.ids, raw.seconds, raw.terminals)
        publish_s += time.perf_counter() - t0
        n += len(raw)
        for p in np.unique(parts).tolist():
            done[p] = int(offsets[parts == p].max()) + 1
    reader.close()
    writer.close(30)
    return {"feed_bytes": int(sum(sizes)), "feed_records": len(sizes), "publish_us_per_tx": publish_s / max(1, n) * 1e6}


def _read(config, expect_rows: int):
    """A fresh table read to the ends of its topics: (table, wall s, CPU s)."""
    from fraudscore.features.online import terminal_state
    from fraudscore.features.spec import BASELINE_SPEC
    from fraudscore.serving.metrics import SidecarMetrics
    from fraudscore.serving.sidecar.state.terminal_table import TerminalTable

    metrics = SidecarMetrics()
    table = TerminalTable(config, terminal_state(BASELINE_SPEC, allowed_lateness_s=config.allowed_lateness_s), metrics)
    # No eviction, so that the two tables can be compared row for row whatever pace each read at.
    table.before_apply = lambda: setattr(table.terminals, "horizon_cap", np.iinfo(np.int64).min // 4)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    table.start()
    done = table.catch_up(None, timeout_s=600)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    table.close()
    rows = {s: metrics.registry.get_sample_value("fraudscore_terminal_table_rows_total", {"source": s}) or 0
            for s in ("input", "feed")}
    if not done or sum(rows.values()) != expect_rows:
        raise RuntimeError(f"the table read {rows} of {expect_rows} transactions (caught up: {done})")
    return table, wall, cpu, rows


def run(args: argparse.Namespace, say=lambda line: print(line, file=sys.stderr, flush=True)) -> dict:
    from fraudscore import simulate
    from fraudscore.data.replay import raw_stream, replay
    from fraudscore.serving.sidecar.config import SidecarConfig

    tx = simulate(customers=args.customers, terminals=args.terminals, days=args.days, seed=args.seed).transactions
    events = raw_stream(tx, seed=args.seed)
    topics = _fresh_topics(args.bootstrap_servers, args.partitions)
    say(f"replaying {len(tx):,} transactions to {topics['in']} ({args.partitions} partitions)")
    replay(events, {"bootstrap.servers": args.bootstrap_servers}, topics["in"], topics["labels"], speedup=0.0)
    common = dict(bundle=Path("b"), bootstrap_servers=args.bootstrap_servers, input_topic=topics["in"],
                  output_topic="unused", alerts_topic="unused", dlq_topic="unused", labels_topic=topics["labels"],
                  group_id=f"feed-bench-{uuid.uuid4().hex[:6]}")
    configs = {"input": SidecarConfig(**common), "feed": SidecarConfig(**common, state_topic=topics["state"])}
    owners = _write_feed(configs["feed"], topics, args.partitions, args.batch_size)
    input_bytes = int(sum(len(v) for v, label in zip(events.values, events.is_label) if not label))
    say(f"feed written: {owners['feed_records']:,} records, {owners['feed_bytes'] / 1e6:.1f} MB "
        f"(input {input_bytes / 1e6:.1f} MB), owners' publish {owners['publish_us_per_tx']:.2f} µs a transaction")
    timings: dict[str, list] = {"input": [], "feed": []}
    tables = {}
    for _ in range(args.repeats):
        for source in ("input", "feed"):
            table, wall, cpu, rows = _read(configs[source], len(tx))
            timings[source].append((wall, cpu))
            tables[source] = table
            say(f"table from the {source}: {wall:.2f} s, CPU {cpu:.2f} s, rows by source {rows}")
    seconds = tx["TX_DATETIME"].astype("datetime64[s]").astype(np.int64) + 7 * 86_400 + 1
    terminals = tx["TERMINAL_ID"].astype(np.int64)
    a, b = tables["input"].terminals.features(seconds, terminals), tables["feed"].terminals.features(seconds, terminals)
    equal = all(np.array_equal(a[k], b[k]) for k in a)
    report = {"transactions": len(tx), "partitions": args.partitions, "batch_size": args.batch_size,
              "input_bytes": input_bytes, **owners, "repeats": args.repeats, "equal": equal}
    for source, runs in timings.items():
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        report[source] = {"wall_s": wall, "cpu_s": cpu, "tx_per_s": len(tx) / wall, "cpu_us_per_tx": cpu / len(tx) * 1e6}
        say(f"{source}: median {wall:.2f} s ({len(tx) / wall:,.0f} tx/s), CPU {cpu / len(tx) * 1e6:.2f} µs a transaction")
    report["cpu_ratio"] = report["input"]["cpu_s"] / report["feed"]["cpu_s"]
    say(f"the feed reads with {report['cpu_ratio']:.1f}x less CPU; tables {'equal' if equal else 'DIFFER'}")
    from confluent_kafka.admin import AdminClient

    AdminClient({"bootstrap.servers": args.bootstrap_servers}).delete_topics(
        [topics["in"], topics["labels"], topics["feed"]])
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m fraudscore.bench.terminal_feed", description=__doc__.split("\n\n")[0])
    p.add_argument("--bootstrap-servers", required=True)
    p.add_argument("--customers", type=int, default=5000)
    p.add_argument("--terminals", type=int, default=10000)
    p.add_argument("--days", type=int, default=40)
    p.add_argument("--partitions", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=4096, help="owners' batch size when writing the feed")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the report here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if min(args.customers, args.terminals, args.days, args.partitions, args.batch_size, args.repeats) < 1:
        print("every size must be at least 1", file=sys.stderr)
        return 2
    try:
        report = run(args)
    except RuntimeError as exc:
        print(f"feed bench: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
