"""Plots in the style of the paper's figures: every system on one chart.

Throughput (steps/min) and KV hit rate against concurrency, one line per
system; with a single load, bars. Optional: without matplotlib nothing is drawn.
"""

from __future__ import annotations

from pathlib import Path

METRICS = (("steps_per_min", "steps per minute (LLM calls completed)", "throughput"),
           ("kv_hit_rate", "KV cache hit rate (cached / prompt tokens)", "hit_rate"))


FLEET_METRICS = (("kv_imbalance", "KV imbalance: time-mean |usage A - usage B|", "imbalance"),)


def draw(points: list[dict], out: Path) -> list[Path]:
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = []
    for mode in sorted({p["mode"] for p in points}):
        mine = [p for p in points if p["mode"] == mode]
        systems = list(dict.fromkeys(p["system"] for p in mine))
        labels = {p["system"]: p.get("label", p["system"]) for p in mine}
        loads = sorted({p["concurrency"] for p in mine})
        fleet = any("kv_imbalance" in p["figures"] for p in mine)
        for key, ylabel, stem in METRICS + (FLEET_METRICS if fleet else ()):
            fig, ax = plt.subplots(figsize=(7, 4.2))
            if len(loads) == 1:
                values = [next((p["figures"][key] or 0 for p in mine if p["system"] == s), 0) for s in systems]
                bars = ax.bar(range(len(systems)), values, color=[f"C{i}" for i in range(len(systems))])
                ax.bar_label(bars, fmt="%.3g", fontsize=8)
                ax.set_xticks(range(len(systems)), [labels[s] for s in systems], rotation=20, ha="right", fontsize=8)
                ax.set_title(f"{mode}, N={loads[0]}")
            else:
                for i, s in enumerate(systems):
                    xs = [p["concurrency"] for p in mine if p["system"] == s]
                    ys = [p["figures"][key] for p in mine if p["system"] == s]
                    style = "--" if s == "limit" else "-"
                    ax.plot(xs, ys, style, marker="o", color=f"C{i}", label=labels[s])
                ax.set_xlabel("concurrency (programs)" if mode != "rollout" else "batch size (programs)")
                ax.legend(fontsize=8)
                ax.set_title(mode)
            ax.set_ylabel(ylabel)
            if key in ("kv_hit_rate", "kv_imbalance"):
                ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            fig.tight_layout()
            path = out / f"{stem}-{mode}.png"
            fig.savefig(path, dpi=120)
            plt.close(fig)
            drawn.append(path)
    return drawn
