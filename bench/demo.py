"""The demo's streaming part: topics, a raw-mode sidecar, a stream of raw transactions, a summary.

    python -m fraudscore.bench.demo --bundle DIR --transactions PATH --bootstrap-servers HOST:PORT
        [--rate 2000] [--seconds 20] [--metrics-port 9464]

Called by scripts/demo.sh after it has started Kafka and Prometheus and built the bundle.
The sidecar computes the features itself (raw mode): the simulated months before the
streamed part go first, at full speed, with every fraud confirmation, as the history its
customer windows and terminal table are built from; then the last transactions stream
at --rate and are measured.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from fraudscore import read_table
from fraudscore.data.replay import Events, raw_stream, replay

from .kafka_io import collect, create_topics, produce_at_rate, start_sidecar

# Topic names by role, suffixed per run: each demo starts clean.
TOPICS = {"in": "tx-in", "out": "tx-scores", "alerts": "tx-alerts", "dlq": "tx-dlq", "labels": "tx-labels"}


def split_history(events: Events, n: int) -> tuple[Events, list[bytes], list[bytes]]:
    """(history: every event but the last `n` transactions, with all confirmations; keys and values of those `n`)."""
    tx = np.flatnonzero(~events.is_label)
    streamed = np.zeros(len(events), bool)
    streamed[tx[len(tx) - min(n, len(tx)):]] = True
    keep = np.flatnonzero(~streamed).tolist()
    history = Events(events.seconds[~streamed], events.is_label[~streamed],
                     [events.keys[i] for i in keep], [events.values[i] for i in keep])
    rows = np.flatnonzero(streamed).tolist()
    return history, [events.keys[i] for i in rows], [events.values[i] for i in rows]


def histogram_quantiles(exposition: str, name: str, quantiles: tuple[float, ...]) -> list[float]:
    """Quantiles from a histogram's cumulative buckets, interpolated as PromQL's histogram_quantile does."""
    buckets = []
    for line in exposition.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.split()[-1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    out = []
    for q in quantiles:
        if total == 0:
            out.append(float("nan"))
            continue
        rank, lower, below = q * total, 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                if bound == float("inf"):
                    out.append(lower)
                else:
                    out.append(lower + (bound - lower) * (rank - below) / max(count - below, 1e-12))
                break
            lower, below = bound, count
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--transactions", type=Path, required=True, help="raw transactions (fraudscore simulate)")
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--metrics-port", type=int, default=9464)
    args = parser.parse_args()

    tag = time.strftime("%Y%m%d-%H%M%S")
    topics = create_topics(args.bootstrap_servers, 2, tag=tag, names=TOPICS, labels=True)
    n = int(args.rate * args.seconds)
    history, keys, values = split_history(raw_stream(read_table(args.transactions)), n)
    warm = int((~history.is_label).sum())
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"demo: sending the history first: {warm:,} transactions and {int(history.is_label.sum()):,} fraud "
          "confirmations, at full speed", flush=True)
    replay(history, {"bootstrap.servers": args.bootstrap_servers}, topics["in"], topics["labels"])
    sidecar, _ = start_sidecar(args.bootstrap_servers, args.bundle, topics, group=f"demo-{tag}",
                               metrics_port=args.metrics_port, ready_timeout_s=300,
                               extra=("--input", "raw", "--labels-topic", topics["labels"]))
    try:
        print(f"demo: topics {', '.join(topics.values())}", flush=True)
        # The history's results are awaited before the stream starts: it builds the sidecar's
        # feature state, and warms up a broker started seconds ago (slow for its first seconds).
        collect(args.bootstrap_servers, topics["out"], warm, 300)
        print(f"demo: sidecar ready; streaming {len(values):,} transactions at {args.rate:,.0f}/s", flush=True)
        collected: dict = {}
        reader = threading.Thread(target=lambda: collected.update(
            zip(("arrival", "stamps", "ids"), collect(args.bootstrap_servers, topics["out"], warm + len(values), args.seconds + 60))))
        reader.start()
        t0 = time.time()
        sent_at = produce_at_rate(args.bootstrap_servers, topics["in"], keys, values, args.rate)
        elapsed = time.time() - t0
        reader.join()
        with urllib.request.urlopen(f"http://127.0.0.1:{args.metrics_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
    finally:
        sidecar.send_signal(signal.SIGTERM)
        sidecar.wait(60)

    def metric(name: str) -> float:
        return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " ") or line.startswith(name + "{"))

    got = [i for i in collected.get("ids", []) if i in sent_at]
    latency = np.array([a - sent_at[i] for a, i in zip(collected.get("arrival", []), collected.get("ids", [])) if i in sent_at])
    p50, p99 = (np.median(latency) * 1e3, np.quantile(latency, 0.99) * 1e3) if len(latency) else (float("nan"),) * 2
    h50, h99 = histogram_quantiles(metrics, "fraudscore_end_to_end_latency_seconds", (0.5, 0.99))
    print("demo summary")
    print(f"  transactions streamed  {len(values):,} raw transactions (after {warm:,} of history sent as a backlog)")
    print(f"  scored                 {len(set(got)):,} (missing {len(set(sent_at) - set(got)):,})")
    print(f"  alerts raised          {metric('fraudscore_alerts_total'):,.0f} (history included)")
    print(f"  dead letters           {metric('fraudscore_dead_letters_total'):,.0f}")
    print(f"  throughput             {len(got) / elapsed:,.0f} transactions/s over {elapsed:.1f} s (offered {args.rate:,.0f}/s)")
    print(f"  end-to-end latency     p50 {p50:.1f} ms, p99 {p99:.1f} ms (input timestamp -> result read by a consumer)")
    print(f"  sidecar's histogram    p50 {h50 * 1e3:.1f} ms, p99 {h99 * 1e3:.1f} ms (input -> acknowledged, history included)")
    print(f"  sidecar metrics        http://127.0.0.1:{args.metrics_port}/metrics (while it runs)")


if __name__ == "__main__":
    main()
