"""`--plot FILE.png`: latency and throughput against batch size (needs matplotlib)."""

from __future__ import annotations

from pathlib import Path

from fraudscore.errors import UsageError


def plot_report(report: dict, path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'fraudscore[train]' or matplotlib") from None
    sweep = [r for r in report["results"] if r["mode"] in ("model", "pipeline") and r.get("p50_ms") is not None]
    fig, (dist, left, right) = plt.subplots(1, 3, figsize=(16, 4.2), dpi=100)
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
        ax.legend(fontsize=8)
    fig.suptitle(f"fraudscore bench: {report['bundle']['model_version']}")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
