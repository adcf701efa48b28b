"""Summaries, tables and the time-to-accuracy figure of ``quality.py`` (from its results, so also from its JSON).

    python benchmarks/_quality_report.py q.json q.png               # redraw the figure of a quality.py --json file
    python benchmarks/_quality_report.py s0.json s12.json q.png     # merge runs made apart (seeds, sets), then draw

Merging reads several ``--json`` files of one configuration (runs of other seeds or sets, made as
separate processes), refuses files of different configurations, overrides, representations or
long-schedule factors and a (set, seed) measured twice, recomputes the summary over every run, and
prints the tables before it draws.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path
from typing import Any

__all__ = ["METRICS", "summarise", "summarise_long", "merge", "load", "stats", "fmt", "graded", "fmt_points", "table", "overview",
           "long_table", "protocol_table", "report", "seed_curve", "band", "draw"]


def fmt(s: dict[str, float], digits: int = 3) -> str:
    if not s:
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f}"
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}"


def graded(s: dict[str, float], figure: str) -> str:
    """A plan figure's mean ± std with the grade of its mean (``feature_quality``'s thresholds); ``-`` when not measured.

    ``figure``: ``variance`` (mean per-dimension variance) or ``rank95`` (95%-energy rank / width).
    """
    if not s:
        return "-"
    from hjepa_kit.evaluation.metrics import grade
    from hjepa_kit.plugins.feature_quality import RANK_FRACTION_THRESHOLDS, VARIANCE_THRESHOLDS

    thresholds = VARIANCE_THRESHOLDS if figure == "variance" else RANK_FRACTION_THRESHOLDS
    return f"{fmt(s)} ({grade(s['mean'], thresholds)})"


def fmt_points(s: dict[str, float]) -> str:
    """A difference in points, signed: mean ± std (worst seed)."""
    if not s:
        return "-"
    if s["n"] == 1:
        return f"{s['mean']:+.1f}"
    return f"{s['mean']:+.1f} ± {s['std']:.1f} (worst {s['min']:+.1f})"


def table(summary: dict[str, Any]) -> str:
    """Per dataset: final figures of every representation beside the untrained network and raw pixels, and the curve."""
    lines = []
    for dataset, entry in summary.items():
        pixels = entry["pixels"]
        lines.append(f"\n{dataset}: {fmt(entry['steps'], 0)} steps in {fmt(entry['train_core_minutes'], 2)} core-minutes "
                     f"({entry['completed']}/{entry['steps']['n']} runs reached their {entry['epochs_configured']} epochs), "
                     f"final loss {fmt(entry['final_loss'], 4)}")
        lines.append("| representation | k-NN(20) | untrained k-NN | raw-pixel k-NN | linear | raw-pixel linear "
                     "| RankMe (of width) | feature variance | 95%-energy rank / width |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for rep, f in entry["final"].items():
            lines.append(f"| {rep} | {fmt(f['knn'])} | {fmt(entry['random_init_knn'][rep])} | {fmt(pixels['knn'])} | "
                         f"{fmt(f['linear'])} | {fmt(pixels['linear'])} | {fmt(f['rankme'], 1)} ({f['width']}) | "
                         f"{graded(f.get('variance', {}), 'variance')} | {graded(f.get('rank95', {}), 'rank95')} |")
        minutes = list(next(iter(entry["curve"].values())))
        lines.append("\ntime to accuracy (k-NN(20), core-minutes of pretraining; 0 = random init):")
        lines.append("| representation | " + " | ".join(f"{m} min" for m in minutes) + " |")
        lines.append("|---|" + "---|" * len(minutes))
        for rep, curve in entry["curve"].items():
            lines.append(f"| {rep} | " + " | ".join(fmt(curve[m]) for m in minutes) + " |")
    return "\n".join(lines)


def overview(summary: dict[str, Any], representation: str) -> str:
    """One row per dataset: the evaluated representation against the untrained network and raw pixels."""
    lines = [f"\nevaluated representation ({representation}) per dataset:",
             "| dataset | k-NN(20) | untrained k-NN | raw-pixel k-NN | linear | raw-pixel linear |",
             "|---|---|---|---|---|---|"]
    for dataset, entry in summary.items():
        if representation not in entry["final"]:
            continue
        f, pixels = entry["final"][representation], entry["pixels"]
        lines.append(f"| {dataset} | {fmt(f['knn'])} | {fmt(entry['random_init_knn'][representation])} | "
                     f"{fmt(pixels['knn'])} | {fmt(f['linear'])} | {fmt(pixels['linear'])} |")
    return "\n".join(lines)


def long_table(summary: dict[str, Any], long: dict[str, Any], representation: str) -> str:
    """Final k-NN and linear of the long schedule beside the shipped one, with long - shipped in points."""
    factor = next(iter(long.values()))["factor"]
    lines = [f"\nlong schedule: {factor}x training.epochs against the shipped length (Δ = long - shipped in points, "
             f"paired by seed: mean ± std (worst seed); * = evaluated representation):",
             "| dataset | representation | epochs (completed) | k-NN shipped | k-NN long | Δ k-NN | linear shipped "
             "| linear long | Δ linear |",
             "|---|---|---|---|---|---|---|---|---|"]
    for dataset, entry in long.items():
        shipped = summary[dataset]
        n = entry["steps"]["n"]
        epochs = (f"{shipped['epochs_configured']} ({entry['shipped_completed']}/{n}) → "
                  f"{entry['epochs_configured']} ({entry['long_completed']}/{n})")
        for rep, f in entry["final"].items():
            s, d = shipped["final"][rep], entry["delta_points"][rep]
            mark = "*" if rep == representation else ""
            lines.append(f"| {dataset} | {rep}{mark} | {epochs} | {fmt(s['knn'])} | {fmt(f['knn'])} | {fmt_points(d['knn'])} | "
                         f"{fmt(s['linear'])} | {fmt(f['linear'])} | {fmt_points(d['linear'])} |")
    return "\n".join(lines)


#: Final figures per representation; ``variance`` and ``rank95`` (the plan's graded feature figures)
#: are absent from JSON files written before they were measured, and summarise to ``{}`` there.
METRICS = ("knn", "linear", "rankme", "variance", "rank95")


def stats(values: list[float | None]) -> dict[str, float]:
    """Mean, sample std, min, max and count of ``values`` (``None`` and NaN left out; ``{}`` if none is left)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n": len(values)}


def protocol_table(runs: list[dict[str, Any]]) -> str:
    """``--protocols``: few-shot per representation and the attentive probe, trained / untrained / raw pixels, over seeds."""
    lines = ["\nthe other protocols (trained / untrained network / raw pixels; mean ± std over seeds):",
             "| dataset | protocol | representation | trained | untrained | raw pixels |", "|---|---|---|---|---|---|"]
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        rs = [r for r in runs if r["dataset"] == dataset and r.get("protocols")]
        if not rs:
            continue
        few = rs[0]["protocols"]["trained"].get("few_shot", {})
        for rep, shots in few.items():
            for k in shots:
                trained = stats([r["protocols"]["trained"]["few_shot"][rep][k] for r in rs])
                untrained = stats([r["protocols"]["untrained"]["few_shot"][rep][k] for r in rs])
                pixels = rs[0]["pixels"].get("few_shot", {}).get(k)
                lines.append(f"| {dataset} | {k}-shot | {rep} | {fmt(trained)} | {fmt(untrained)} | "
                             f"{'-' if pixels is None else f'{pixels:.3f}'} |")
        if "attentive_probe" in rs[0]["protocols"]["trained"]:
            trained = stats([r["protocols"]["trained"]["attentive_probe"]["top1"] for r in rs])
            untrained = stats([r["protocols"]["untrained"]["attentive_probe"]["top1"] for r in rs])
            tokens = rs[0]["protocols"]["trained"]["attentive_probe"]["tokens_of"]
            lines.append(f"| {dataset} | attentive probe | {tokens} tokens | {fmt(trained)} | {fmt(untrained)} | - |")
    return "\n".join(lines)


def report(run: dict[str, Any]) -> str:
    """One line per run, as it ends."""
    f = run["final"]
    tag = f" ({run['factor']}x epochs)" if run["factor"] > 1 else ""
    return (f"{run['dataset']} seed {run['seed']}{tag}: {run['steps']} steps, {run['epochs']}/{run['epochs_configured']} "
            f"epochs, {run['train_core_minutes']:.2f} core-min, "
            + ", ".join(f"{k} knn {v['knn']:.3f} lin {v['linear']:.3f} rankme {v['rankme']:.0f}" for k, v in f.items())
            + "; untrained knn " + ", ".join(f"{k} {v:.3f}" for k, v in run["curve"][0]["knn"].items())
            + f"; raw pixels knn {run['pixels']['knn']:.3f} lin {run['pixels']['linear']:.3f}")


def seed_curve(run: dict[str, Any], rep: str) -> tuple[list[float], list[float]]:
    """One run's k-NN of ``rep`` against core-minutes: its measured points, then its end.

    Curve minutes past the end of a completed run (``after_end``) are left out: the run's own end,
    at its ``train_core_minutes``, stands for them.
    """
    points = [(p["minute"], p["knn"][rep]) for p in run["curve"] if not p.get("after_end")]
    points.append((max(run["train_core_minutes"], points[-1][0] if points else 0.0), run["final"][rep]["knn"]))
    points.sort(key=lambda p: p[0])
    return [p[0] for p in points], [p[1] for p in points]


def band(runs: list[dict[str, Any]], rep: str) -> tuple[list[float], list[float], list[float], list[float]]:
    """Minutes, and the mean, min and max over ``runs`` of k-NN there.

    The minutes are every run's; a run is read between its points by linear interpolation and
    holds its final figure after its end.
    """
    import numpy as np

    curves = [seed_curve(r, rep) for r in runs]
    grid = sorted({x for xs, _ in curves for x in xs})
    values = np.array([np.interp(grid, xs, ys) for xs, ys in curves])
    return grid, values.mean(0).tolist(), values.min(0).tolist(), values.max(0).tolist()


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def draw(payload: dict[str, Any], path: Path) -> None:
    """One panel per dataset: k-NN of the evaluated representation against core-minutes, mean over seeds with
    its min..max band, the long schedule's dashed (if run), and the untrained network and raw pixels as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rep, summary = payload["representation"], payload["summary"]
    datasets = list(summary)
    cols = min(len(datasets), 3)
    rows = -(-len(datasets) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.8 * cols, 3.8 * rows + 0.4), squeeze=False, layout="constrained")
    for ax, dataset in zip(axes.flat, datasets):
        entry = summary[dataset]
        runs = [r for r in payload["runs"] if r["dataset"] == dataset]
        shown = rep if rep in entry["final"] else next(iter(entry["final"]))
        x, mean, low, high = band(runs, shown)
        ax.plot(x, mean, marker="o", ms=3, color="C0", label=f"pretrained ({_epochs(entry['epochs_configured'])})")
        ax.fill_between(x, low, high, color="C0", alpha=0.2, linewidth=0)
        long_runs = [r for r in payload.get("long_runs", []) if r["dataset"] == dataset]
        if long_runs:
            x, mean, low, high = band(long_runs, shown)
            ax.plot(x, mean, ls="--", marker=".", color="C2",
                    label=f"{payload['long_factor']}x schedule ({_epochs(long_runs[0]['epochs_configured'])})")
            ax.fill_between(x, low, high, color="C2", alpha=0.12, linewidth=0)
        untrained, pixels = entry["random_init_knn"][shown]["mean"], entry["pixels"]["knn"]["mean"]
        ax.axhline(untrained, color="C3", ls=":", label=f"untrained network {untrained:.3f}")
        ax.axhline(pixels, color="0.4", ls="-.", label=f"raw pixels {pixels:.3f}")
        ax.set_title(f"{dataset} ({len(runs)} seed{'s' if len(runs) > 1 else ''})")
        ax.set_xlabel("core-minutes of pretraining")
        ax.set_ylabel(f"k-NN(20) top-1, {shown}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    fig.suptitle(f"time to accuracy: {Path(str(payload['config'])).name}\nmean over seeds, band min..max", fontsize=9)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dataset, over its runs (seeds): every representation's final figures, untrained k-NN and curve,
    the raw pixels, core-minutes, steps, final loss and how many runs reached their configured epochs."""
    summary: dict[str, Any] = {}
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        rs = [r for r in runs if r["dataset"] == dataset]
        reps = list(rs[0]["final"])
        entry: dict[str, Any] = {"final": {}, "random_init_knn": {}, "curve": {}, "pixels": {}}
        for rep in reps:
            entry["final"][rep] = {m: stats([r["final"][rep].get(m) for r in rs]) for m in METRICS}
            entry["final"][rep]["width"] = rs[0]["final"][rep]["width"]
            entry["random_init_knn"][rep] = stats([r["curve"][0]["knn"][rep] for r in rs])
            minutes = sorted({p["minute"] for r in rs for p in r["curve"]})
            entry["curve"][rep] = {
                str(m): stats([p["knn"][rep] for r in rs for p in r["curve"] if p["minute"] == m]) for m in minutes
            }
        entry["pixels"] = {m: stats([r["pixels"][m] for r in rs]) for m in ("knn", "linear")}
        entry["train_core_minutes"] = stats([r["train_core_minutes"] for r in rs])
        entry["steps"] = stats([float(r["steps"]) for r in rs])
        entry["final_loss"] = stats([r["final_loss"] for r in rs])
        entry["epochs_configured"] = rs[0]["epochs_configured"]
        entry["completed"] = sum(bool(r["completed"]) for r in rs)
        summary[dataset] = entry
    return summary


def summarise_long(runs: list[dict[str, Any]], long_runs: list[dict[str, Any]], factor: int) -> dict[str, Any]:
    """Per dataset: the long runs' summary, and long - shipped in points, paired by seed."""
    out: dict[str, Any] = {}
    shipped = {(r["dataset"], r["seed"]): r for r in runs}
    for dataset, entry in summarise(long_runs).items():
        pairs = [(shipped[(r["dataset"], r["seed"])], r) for r in long_runs if r["dataset"] == dataset]
        entry["factor"] = factor
        entry["delta_points"] = {
            rep: {m: stats([100.0 * (lr["final"][rep][m] - sr["final"][rep][m]) for sr, lr in pairs])
                  for m in ("knn", "linear")}
            for rep in entry["final"]
        }
        entry["shipped_completed"] = sum(bool(sr["completed"]) for sr, _ in pairs)
        entry["long_completed"] = sum(bool(lr["completed"]) for _, lr in pairs)
        out[dataset] = entry
    return out


#: What every merged file must share: runs of one configuration measured the same way.
SAME = ("config", "overrides", "representation", "long_factor", "budget_min")


def merge(payloads: list[dict[str, Any]], names: list[str] | None = None) -> dict[str, Any]:
    """One payload from several ``quality.py --json`` payloads of one configuration, summary recomputed.

    Raises:
        ValueError: naming the file that differs in one of :data:`SAME`, or the (set, seed) measured twice.
    """
    names = names or [f"payload {i}" for i in range(len(payloads))]
    first = payloads[0]
    for name, payload in zip(names[1:], payloads[1:]):
        for key in SAME:
            if payload.get(key) != first.get(key):
                raise ValueError(f"{name}: {key} is {payload.get(key)!r}, but {names[0]} has {first.get(key)!r}; "
                                 "only runs of one configuration measured the same way can be merged")
    seen: dict[tuple[str, int, str], str] = {}
    for name, payload in zip(names, payloads):
        for run in [*payload["runs"], *payload.get("long_runs", [])]:
            key = (run["dataset"], run["seed"], run.get("schedule", "shipped"))
            if key in seen:
                raise ValueError(f"{name}: {key[0]} seed {key[1]} ({key[2]}) is also in {seen[key]}; merge each run once")
            seen[key] = name
    merged = {**first, "figure": None}
    merged["runs"] = [r for p in payloads for r in p["runs"]]
    merged["long_runs"] = [r for p in payloads for r in p.get("long_runs", [])]
    merged["datasets"] = {k: v for p in payloads for k, v in p["datasets"].items()}
    merged["seeds"] = sorted({r["seed"] for r in merged["runs"]})
    merged["summary"] = summarise(merged["runs"])
    if merged["long_runs"]:
        for dataset, entry in summarise_long(merged["runs"], merged["long_runs"], first["long_factor"]).items():
            merged["summary"][dataset]["long"] = entry
    return merged


#: The keys of a ``quality.py --json`` payload this module reads.
PAYLOAD_KEYS = ("config", "representation", "datasets", "summary", "runs")


def load(path: str | Path) -> dict[str, Any]:
    """A ``quality.py --json`` payload. Raises ValueError naming the file when it is not one."""
    try:
        payload = json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    missing = [k for k in PAYLOAD_KEYS if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise ValueError(f"{path}: not a quality.py --json file (no {', '.join(missing)})")
    return payload


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[-1].endswith(".png"):
        print(__doc__, file=sys.stderr)
        return 2
    *sources, out = argv
    try:
        payloads = [load(source) for source in sources]
        payload = payloads[0] if len(payloads) == 1 else merge(payloads, sources)
    except (OSError, ValueError) as error:
        print(f"_quality_report.py: {error}", file=sys.stderr)
        return 2
    if len(payloads) > 1:
        print(table(payload["summary"]))
        print(overview(payload["summary"], payload["representation"]))
    draw(payload, Path(out))
    print(f"# wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
