"""The transactions every bench mode sends: simulated, with their features, as Kafka messages."""

from __future__ import annotations


def simulated_messages(features, n: int, seed: int = 3, recorded_spec: dict | None = None) -> tuple[list[bytes], list[bytes]]:
    """Keys and values of `n` simulated transactions carrying the bundle's `features` (enough days to have `n`),
    computed under the bundle's recorded feature specification (`recorded_spec`, its manifest's
    `feature_spec`: its resolution too) or, for a bundle that records none, the first feature
    version that has them all (version 2's when none does: a missing feature is then named)."""
    from fraudscore import add_baseline_features, simulate
    from fraudscore.data.loadgen import transaction_messages
    from fraudscore.features.spec import SPEC_V2, SPECS, FeatureSpec

    if recorded_spec:
        spec = FeatureSpec.from_dict(recorded_spec)
    else:
        spec = next((spec for spec in SPECS.values() if set(features) <= set(spec.names)), SPEC_V2)
    days = max(3, int(n / 9_000) + 2)
    table = add_baseline_features(simulate(customers=5000, terminals=10000, days=days, seed=seed).transactions, spec)
    keys, values = transaction_messages(table, features)
    return keys[:n], values[:n]
