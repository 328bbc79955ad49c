"""Live quality computed the slow way, one transaction at a time: the reference that
`fraudscore quality`'s per-day counts are checked against (tests/unit/serving/test_quality.py,
tests/kafka/test_quality_monitor.py)."""

from __future__ import annotations

from collections import defaultdict

from fraudscore.serving.quality import DAY_S


def expected_quality(rows: list[dict], confirmed: set, k: int) -> dict:
    """Per (day, role, version): (transactions, true positives, false positives, false
    negatives, cards in the top k, compromised cards among them), computed one transaction at
    a time. `rows`: {"tx", "second", "card", "champion"/"challenger": (version, score, alert)}."""
    out: dict = {}
    groups = defaultdict(dict)
    for r in rows:
        for role in ("champion", "challenger"):
            if r.get(role) is None or r[role][1] is None:
                continue
            groups[(r["second"] // DAY_S, role, r[role][0])].setdefault(r["tx"], (r["card"], *r[role][1:]))
    for key, txs in groups.items():
        tp = sum(1 for tx, (_, _, alert) in txs.items() if alert and tx in confirmed)
        fp = sum(1 for tx, (_, _, alert) in txs.items() if alert and tx not in confirmed)
        fn = sum(1 for tx, (_, _, alert) in txs.items() if not alert and tx in confirmed)
        best, hit = {}, defaultdict(bool)
        for tx, (card, score, _) in txs.items():
            best[card] = max(best.get(card, -1.0), score)
            hit[card] |= tx in confirmed
        top = sorted(best, key=lambda c: (-best[c], c))[:k]
        out[key] = (len(txs), tp, fp, fn, len(top), sum(hit[c] for c in top))
    return out
