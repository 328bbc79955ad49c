"""`--plot FILE.png`: latency and throughput against batch size, and, for a report with Kafka rate
steps, end-to-end latency against the offered rate (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

from fraudscore.errors import UsageError

RATE_MODES = ("kafka-rate", "kafka-raw-rate")


def latency_vs_rate(ax, rows: list[dict], slo_ms: float | None) -> None:
    """End-to-end latency (p50, p99, p99.9) against the offered rate, one colour per mode and
    variant, the SLO as a horizontal line: the knee of the curve is where p99 crosses it."""
    cases = sorted({(r["mode"], r.get("variant") or "", r.get("workers", 1)) for r in rows})
    for colour, (mode, variant, workers) in enumerate(cases):
        case = sorted((r for r in rows if (r["mode"], r.get("variant") or "", r.get("workers", 1)) == (mode, variant, workers)),
                      key=lambda r: r["rate_per_s"])
        name = " ".join(p for p in (mode.removeprefix("kafka-"), variant, f"x{workers}" if workers > 1 else "") if p)
        for key, style, marker in (("p50_ms", "-", "o"), ("p99_ms", "--", "x"), ("p999_ms", ":", "^")):
            points = [(r["rate_per_s"], r[key]) for r in case if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), linestyle=style, marker=marker, color=f"C{colour}",
                        label=f"{name} {key.removesuffix('_ms').replace('p999', 'p99.9')}")
    if slo_ms:
        ax.axhline(slo_ms, color="red", linewidth=1, label=f"SLO p99 {slo_ms:g} ms")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate, transactions / s")
    ax.set_ylabel("end-to-end latency, ms")
    ax.set_title("Kafka latency vs offered rate")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def plot_report(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'fraudscore[train]' or matplotlib") from None
    sweep = [r for r in report["results"] if r["mode"] in ("model", "pipeline") and r.get("p50_ms") is not None]
    rated = [r for r in report["results"] if r["mode"] in RATE_MODES and r.get("p50_ms") is not None]
    fig, axes = plt.subplots(1, 4 if rated else 3, figsize=(21 if rated else 16, 4.2), dpi=100)
    dist, left, right = axes[:3]
    if rated:
        latency_vs_rate(axes[3], rated, report.get("config", {}).get("slo_ms"))
    for r in sweep:
        if r.get("percentiles_ms") and r["mode"] == "pipeline":
            qs = sorted(r["percentiles_ms"], key=float)
            dist.plot([r["percentiles_ms"][q] for q in qs], [float(q) for q in qs], marker=".",
                      label=f"pipeline {r.get('device', 'cpu')} batch {r['batch_size']}")
    dist.set_xscale("log")
    dist.set_xlabel("batch latency, ms")
    dist.set_ylabel("percentile")
    dist.set_title("latency distribution (pipeline)")
    dist.grid(True, which="both", alpha=0.3)
    if dist.get_legend_handles_labels()[0]:  # a Kafka-only report has no sweep to label
        dist.legend(fontsize=7)
    for mode in sorted({r["mode"] for r in sweep}):
        for device in sorted({r.get("device", "cpu") for r in sweep}):
            rows = sorted((r for r in sweep if r["mode"] == mode and r.get("device", "cpu") == device), key=lambda r: r["batch_size"])
            if not rows:
                continue
            sizes = [r["batch_size"] for r in rows]
            left.plot(sizes, [r["p50_ms"] for r in rows], marker="o", label=f"{mode} {device} p50")
            left.plot(sizes, [r["p99_ms"] for r in rows], marker="x", linestyle="--", label=f"{mode} {device} p99")
            right.plot(sizes, [r["throughput_per_s"] for r in rows], marker="o", label=f"{mode} {device}")
    for ax, ylabel in ((left, "batch latency, ms"), (right, "transactions / s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"fraudscore bench: {report['bundle']['model_version']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
