"""The naive reference: what a user would write without fraudscore's batching.

poll one message -> json.loads -> score one row -> produce -> commit, in a loop. Run as
`python -m fraudscore.bench.naive BUNDLE BOOTSTRAP INPUT OUTPUT GROUP COUNT`; it stops
after COUNT messages (or 120 s without one) and prints how many it scored.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
from confluent_kafka import Consumer, Producer

from fraudscore.serving.bundle import load_bundle
from fraudscore.serving.scorer import Scorer


def main() -> None:
    bundle_dir, bootstrap, source, target, group, count = sys.argv[1:7]
    bundle = load_bundle(bundle_dir)
    scorer = Scorer(bundle)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    producer = Producer({"bootstrap.servers": bootstrap})
    consumer.subscribe([source])
    done, idle_since = 0, time.monotonic()
    while done < int(count) and time.monotonic() - idle_since < 120:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        idle_since = time.monotonic()
        doc = json.loads(msg.value())
        row = np.array([[doc[f] for f in bundle.features]], dtype=np.float32)
        score = float(scorer.score(row)[0])
        producer.produce(target, json.dumps({"transaction_id": doc["TRANSACTION_ID"], "score": score}).encode(), msg.key())
        producer.poll(0)
        consumer.commit(message=msg, asynchronous=True)
        done += 1
    producer.flush(30)
    consumer.close()
    print(done)


if __name__ == "__main__":
    main()
