"""The wire contract of the sidecar's topics that other programs read: the dead-letter header
names (written by `sidecar/delivery.py`, read by `dlq.py`, `fraudscore dlq` and any consumer of
the dead-letter topic), the replay header of `fraudscore dlq replay`, and the key and value
limits. One place, so that the writer and the readers cannot drift; docs/sidecar.md
("Dead letters") documents the same names for other clients.

    >>> headers = dict([(REASON, b"bad_json"), (SOURCE_OFFSET, b"40")])
    >>> headers["fraudscore.reason"], int(headers[SOURCE_OFFSET])
    (b'bad_json', 40)
"""

from __future__ import annotations

# A key over this is a dead letter (reason oversized_key), cut to this length in the DLQ, and
# never a transaction in the feature state.
MAX_KEY_BYTES = 4096
# Dead letters carry the original value when it fits under the producer's and the broker's
# default 1 MB message limits (with room for the headers); otherwise its first 64 KiB.
DLQ_MAX_BYTES = 900_000
TRUNCATED_DLQ_BYTES = 64 * 1024

# Dead-letter headers (values UTF-8; numbers in decimal).
REASON = "fraudscore.reason"                      # why: bad_json, missing_field, late, ...
DETAIL = "fraudscore.detail"                      # every problem of the message, at most 500 bytes
SOURCE_TOPIC = "fraudscore.source.topic"          # where the rejected input was
SOURCE_PARTITION = "fraudscore.source.partition"
SOURCE_OFFSET = "fraudscore.source.offset"
MODEL_VERSION = "fraudscore.model.version"        # the model in service when it was rejected
TRUNCATED = "fraudscore.truncated"                # the value's original length, when it was cut
KEY_TRUNCATED = "fraudscore.key.truncated"        # the key's original length, when it was cut
# On a message that `fraudscore dlq replay` sent back to the input: DLQ topic/partition/offset.
REPLAYED_FROM = "fraudscore.replayed.from"
