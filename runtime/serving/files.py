"""`fraudscore score`: the runtime's scoring core on files instead of Kafka.

- JSON Lines in (one transaction object a line, as on the input topic): every line goes
  through the same decode -> score -> encode path as the sidecar. Results are written as
  JSON Lines (the result messages) or as a table (.csv, .csv.gz, .parquet); rejected lines
  go to `<out>.rejected.jsonl` with their line number, reason and detail.
- A table in (.csv, .csv.gz, .parquet with the feature columns and an id column,
  TRANSACTION_ID or `--id-column`): the same scorer on its feature matrix; rows with
  non-finite features are rejected the same way. A table without its id column is
  refused: every result carries an id that was in the input.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fraudscore.atomic import check_parent, write_bytes
from fraudscore.serving.bundle import load_bundle
from fraudscore.serving.decode import ID_FIELD, decode_table
from fraudscore.errors import InputError, UsageError
from fraudscore.serving.pipeline import Pipeline
from fraudscore.serving.scorer import Scorer
from fraudscore.data.table import Table, file_format, read_table, write_table

CHUNK = 65_536


@dataclass(frozen=True)
class ScoreSummary:
    scored: int
    alerts: int
    rejected: int
    rejects_path: Path | None


def _jsonl_format(path: Path) -> str | None:
    name = str(path).lower()
    for suffix in (".jsonl.gz", ".jsonl", ".ndjson"):
        if name.endswith(suffix):
            return suffix
    return None


def score_file(bundle_dir: Path, source: Path, out: Path, device: str = "cpu", threads: int = 1,
               id_column: str | None = None) -> ScoreSummary:
    """Score `source` into `out` (and `<out>.rejected.jsonl`); see the module docstring.

    A table's ids come from `id_column` (default TRANSACTION_ID); a table without that
    column is refused rather than given made-up ids. JSON Lines carry TRANSACTION_ID in
    each message, as on the input topic, so `id_column` does not apply to them.
    """
    if id_column is not None and _jsonl_format(source) and id_column != ID_FIELD:
        raise UsageError(f"--id-column applies to tables; JSON Lines messages carry their id in {ID_FIELD}, "
                         "as on the input topic")
    bundle = load_bundle(bundle_dir)
    pipeline = Pipeline(bundle.manifest, Scorer(bundle, device=device, intra_op_threads=threads))
    out_jsonl = _jsonl_format(out)
    if out_jsonl is None:
        file_format(out)  # raises with the list of accepted suffixes
    if not source.is_file():
        raise InputError(f"{source}: no such file")
    rejects: list[dict] = []
    if _jsonl_format(source):
        opener = gzip.open if str(source).lower().endswith(".gz") else open
        with opener(source, "rb") as fh:
            lines = fh.read().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        ids: list = []
        scores, alerts, payloads = [], [], []
        for lo in range(0, len(lines), CHUNK):
            batch = lines[lo : lo + CHUNK]
            result = pipeline.score_batch(batch)
            payloads += result.payloads
            scores.append(result.scores)
            alerts.append(result.alerts)
            ids += result.ids
            rejects += [{"line": lo + r.index + 1, "reason": r.reason, "detail": r.detail} for r in result.rejections]
        all_scores = np.concatenate(scores) if scores else np.empty(0, np.float32)
        all_alerts = np.concatenate(alerts) if alerts else np.empty(0, bool)
    else:
        table = read_table(source)
        id_name = id_column or ID_FIELD
        if id_name not in table:
            hint = "pass --id-column NAME to say which column holds the ids" if id_column is None else "check the name"
            raise InputError(f"{source}: no id column {id_name} (columns: {', '.join(table.columns)}); {hint}. "
                             "Results carry the input's own ids, never made-up ones")
        row_ids = table[id_name].tolist()
        result = pipeline.score_decoded(decode_table(table, pipeline.features, row_ids, source=str(source),
                                                        amount_rule=pipeline.amount_rule))
        # Line numbers of a table count its header: data row i is line i + 2.
        rejects += [{"line": r.index + 2, "reason": r.reason, "detail": r.detail} for r in result.rejections]
        ids, all_scores, all_alerts = result.ids, result.scores, result.alerts
        payloads = result.payloads if out_jsonl else []

    _write_atomic_results(out, out_jsonl, payloads, ids, all_scores, all_alerts, pipeline.model_version,
                          id_column or ID_FIELD)
    rejects_path = None
    rejects.sort(key=lambda r: r["line"])
    if rejects:
        rejects_path = out.with_name(out.name + ".rejected.jsonl")
        rejects_path.write_text("".join(json.dumps(r) + "\n" for r in rejects))
    return ScoreSummary(len(all_scores), int(all_alerts.sum()), len(rejects), rejects_path)


def _write_atomic_results(out: Path, out_jsonl: str | None, payloads, ids, scores, alerts, version: str,
                          id_name: str = ID_FIELD) -> None:
    check_parent(out)  # missing directories are created by the atomic write
    if out_jsonl is None:
        id_array = np.array(ids) if ids and not isinstance(ids[0], str) else np.array(ids, dtype=np.dtypes.StringDType())
        table = Table(
            {
                id_name: id_array if len(ids) else np.empty(0, np.int64),  # named as in the input, for joins
                "score": scores.astype(np.float64),
                "decision": np.where(alerts, "alert", "pass").astype(np.dtypes.StringDType()),
            }
        )
        write_table(table, out)
        return
    data = b"".join(p + b"\n" for p in payloads)
    write_bytes(out, gzip.compress(data, mtime=0) if out_jsonl.endswith(".gz") else data)
