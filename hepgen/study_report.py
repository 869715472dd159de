"""The report of a weak-supervision study (:mod:`hepgen.study`): tables and plots over the scan.

Per method and S/B the injection seeds give a spread: the report quotes the median and the
16 / 84 % quantiles (the seed's and CATHODE's bands) of the test max SIC, its fraction of the
optimum (made toys know their optimal classifier), the SIC at background rejections 10^3 and
10^4, the AUC, and the control-region closure AUC where a method has a closure stage. Written to
``<root>/<study>/report/``:

* ``report.json``: every point's metrics and the per-(method, S/B) summaries;
* ``report.md``: the summary table, ready for a README;
* ``max_sic_vs_sb.png``: median max SIC vs S/B with the 16-84 % band for every method, the
  optimum as a horizontal line and S/sqrt(B) of the signal region on a second axis;
* ``sic_vs_tpr.png`` and ``roc.png`` at one S/B (the plotted signal fraction nearest 1 %), from the
  test scores of the first injection seed (``predictions/scores.npy``: the report stage must run
  ``predict``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from hepgen.metrics.roc import anomaly_summary, roc_curve, sic_curve
from hepgen.plotting import save_figure

METRICS = ("max_sic", "max_sic_fraction", "sic_at_rejection_1e3", "sic_at_rejection_1e4", "auc")
QUANTILES = (0.16, 0.5, 0.84)


def _test_metrics(run_dir: Path) -> dict | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("test")


def point_metrics(study, point) -> dict | None:
    """The report stage's test metrics at ``point`` (plus ``closure_auc``), ``None`` if not done."""
    method = study.methods[point.method]
    test = _test_metrics(study.run_dir(point, method.report_stage))
    if test is None:
        return None
    values = {k: test.get(k) for k in METRICS}
    values["optimal_max_sic"] = test.get("optimal_max_sic")
    if method.closure_stage is not None:
        closure = _test_metrics(study.run_dir(point, method.closure_stage))
        # folded: a template that is told apart scores away from 0.5 on either side
        values["closure_auc"] = None if closure is None else max(closure["auc"], 1.0 - closure["auc"])
    return values


def summarise(values: list[float]) -> dict | None:
    """Median and 16 / 84 % quantiles of the finite ``values`` (``None`` when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return None
    low, median, high = np.quantile(finite, QUANTILES)
    return {"median": float(median), "q16": float(low), "q84": float(high), "n": len(finite)}


def _scores(study, point) -> tuple[np.ndarray, np.ndarray] | None:
    """(score, label) of the report stage's ``predictions/scores.npy`` at ``point``, ``None`` if absent."""
    path = study.run_dir(point, study.methods[point.method].report_stage) / "predictions" / "scores.npy"
    if not path.is_file():
        return None
    table = np.load(path)
    return table[:, 0], table[:, 1]


def group_scores(study, points: list) -> tuple[np.ndarray, np.ndarray] | None:
    """The scores of a group of points together: the k folds of one (S/B, seed) under k-fold
    testing, each event scored once by the classifier that never saw it. ``None`` until all exist."""
    parts = [_scores(study, point) for point in points]
    if any(part is None for part in parts):
        return None
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def fold_metrics(study, points: list, relative_error: float = 0.4) -> dict | None:
    """:class:`~callbacks.anomaly.AnomalyMetrics`' test numbers of the k folds' scores together."""
    scores = group_scores(study, points)
    if scores is None:
        return None
    values = anomaly_summary(*scores, relative_error=relative_error)
    first = point_metrics(study, points[0]) or {}
    values["optimal_max_sic"] = first.get("optimal_max_sic")
    values["max_sic_fraction"] = values["max_sic"] / values["optimal_max_sic"] if values["optimal_max_sic"] else None
    return values


def _groups(study) -> dict[tuple, list]:
    """Points by (method, S/B, seed): one point each, or the k folds of k-fold testing."""
    groups: dict[tuple, list] = {}
    for point in study.points():
        groups.setdefault((point.method, point.signal_fraction, point.injection_seed), []).append(point)
    return groups


def collect(study) -> dict:
    """{method: {S/B label: {"points": [...], metric: summary}}} over the finished points."""
    table: dict[str, dict] = {}
    for (method, fraction, seed), points in _groups(study).items():
        folded = points[0].fold is not None
        metrics = fold_metrics(study, points) if folded else point_metrics(study, points[0])
        if metrics is None:
            continue
        key = "all" if fraction is None else f"{fraction:g}"
        entry = table.setdefault(method, {}).setdefault(key, {"signal_fraction": fraction, "points": []})
        entry["points"].append({"injection_seed": seed, **({"folds": len(points)} if folded else {}), **metrics})
    for method in table.values():
        for entry in method.values():
            for name in (*METRICS, "closure_auc"):
                entry[name] = summarise([p.get(name) for p in entry["points"]])
    return table


def _cell(summary: dict | None, percent: bool = False) -> str:
    if summary is None:
        return "–"
    scale, fmt = (100.0, "{:.0f}") if percent else (1.0, "{:.2f}")
    median, low, high = (fmt.format(scale * summary[k]) for k in ("median", "q16", "q84"))
    return f"{median} [{low}, {high}]" + (" %" if percent else "")


def markdown(table: dict, optimum: float | None) -> str:
    """The summary table: one row per method and S/B, median [16 %, 84 %] over the seeds."""
    lines = [
        "| method | S/B | seeds | max SIC | of optimum | SIC at 1/eps_b = 10^3 | AUC | CR closure AUC |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, entries in table.items():
        for key, entry in sorted(entries.items(), key=lambda kv: kv[1]["signal_fraction"] or 0.0):
            sb = "–" if entry["signal_fraction"] is None else f"{100 * entry['signal_fraction']:g} %"
            lines.append(
                f"| {method} | {sb} | {len(entry['points'])} | {_cell(entry['max_sic'])} | "
                f"{_cell(entry['max_sic_fraction'], percent=True)} | {_cell(entry['sic_at_rejection_1e3'])} | "
                f"{_cell(entry['auc'])} | {_cell(entry['closure_auc'])} |"
            )
    note = f"\nOptimal max SIC (the exact likelihood ratio): {optimum:.2f}.\n" if optimum else "\n"
    return "\n".join(lines) + "\n" + note + "Cells: median [16 %, 84 %] over the injection seeds.\n"


def _toy_record(study) -> dict | None:
    folder = study.data.get("data_dir")
    path = Path(folder) / "ad_toy.json" if folder else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def max_sic_figure(table: dict, optimum: float | None, n_background_sr: float | None) -> Figure:
    """Median max SIC vs S/B (16-84 % band) per method, the optimum, and S/sqrt(B) on top."""
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (method, entries) in enumerate(table.items()):
        rows = sorted((e for e in entries.values() if e["signal_fraction"] is not None and e["max_sic"]),
                      key=lambda e: e["signal_fraction"])  # fmt: skip
        if not rows:
            continue
        sb = np.array([100 * e["signal_fraction"] for e in rows])
        median = np.array([e["max_sic"]["median"] for e in rows])
        low, high = (np.array([e["max_sic"][k] for e in rows]) for k in ("q16", "q84"))
        colour = f"C{i}"
        if len(rows) == 1:  # a method that does not depend on S/B (Supervised): a reference line
            ax.axhline(median[0], color=colour, linestyle="-.", label=f"{method} (any S/B)")
            ax.axhspan(low[0], high[0], color=colour, alpha=0.15, linewidth=0)
            continue
        ax.plot(sb, median, marker="o", color=colour, label=method)
        ax.fill_between(sb, low, high, color=colour, alpha=0.2, linewidth=0)
    if optimum:
        ax.axhline(optimum, color="black", linestyle=":", label="optimal classifier")
    ax.axhline(1.0, color="gray", linestyle="--", linewidth=0.8, label="no discrimination")
    ax.set(xlabel="injected S/B in the signal region [%]", ylabel="max SIC (median, 16-84 % band)")
    ax.legend(fontsize="small")
    if n_background_sr:
        scale = math.sqrt(n_background_sr) / 100.0  # S/sqrt(B) = (S/B) sqrt(B), S/B in %
        top = ax.secondary_xaxis("top", functions=(lambda x: x * scale, lambda y: y / scale))
        top.set_xlabel(r"$S/\sqrt{B}$ in the signal region")
    return fig


def _first_scores(study, method, signal_fraction) -> tuple[np.ndarray, np.ndarray] | None:
    """The scores of the first injection seed (all its folds) with finished predictions."""
    for (name, fraction, _), points in _groups(study).items():
        if name == method.name and fraction == signal_fraction:
            scores = group_scores(study, points)
            if scores is not None:
                return scores
    return None


def curve_figures(study, signal_fraction: float | None, optimum: float | None) -> dict[str, Figure]:
    """SIC vs signal efficiency and the ROC of every method at one S/B (first injection seed)."""
    sic = Figure(figsize=(6, 4.5), layout="constrained")
    roc = Figure(figsize=(6, 4.5), layout="constrained")
    ax_sic, ax_roc = sic.subplots(), roc.subplots()
    for i, method in enumerate(study.methods.values()):
        fractions = method.signal_fractions
        if not fractions or signal_fraction in fractions:
            fraction = signal_fraction if fractions else None
        elif len(fractions) == 1:  # a method at one S/B only (Supervised): its curve is the reference
            fraction = fractions[0]
        else:
            continue
        scores = _first_scores(study, method, fraction)
        if scores is None:
            continue
        eps_s, eps_b, _ = roc_curve(scores[0], scores[1])
        ax_sic.plot(*sic_curve(eps_s, eps_b), color=f"C{i}", label=method.name)
        kept = eps_b > 0
        ax_roc.plot(eps_s[kept], 1.0 / eps_b[kept], color=f"C{i}", label=method.name)
    grid = np.linspace(0.01, 1.0, 100)
    ax_sic.plot(grid, np.sqrt(grid), linestyle="--", color="gray", label="random")
    ax_roc.plot(grid, 1.0 / grid, linestyle="--", color="gray", label="random")
    if optimum:
        ax_sic.axhline(optimum, color="black", linestyle=":", label="optimal max SIC")
    where = "" if signal_fraction is None else f", S/B = {100 * signal_fraction:g} %"
    ax_sic.set(xlabel=r"signal efficiency $\epsilon_s$", ylabel=r"SIC $\epsilon_s/\sqrt{\epsilon_b}$",
               title=f"significance improvement{where}")  # fmt: skip
    ax_roc.set(xlabel=r"signal efficiency $\epsilon_s$", ylabel=r"background rejection $1/\epsilon_b$",
               yscale="log", title=f"ROC{where}")  # fmt: skip
    ax_sic.legend(fontsize="small")
    ax_roc.legend(fontsize="small")
    return {"sic_vs_tpr": sic, "roc": roc}


def _replace_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader never sees half a
    report. A report is derived from the runs, so a new one replaces the old."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def _optimum(table: dict, record: dict | None) -> float | None:
    """The optimal max SIC the SR classifiers' test recorded (it knows their inputs), else the
    made toy's features-only optimum."""
    for entries in table.values():
        for entry in entries.values():
            for point in entry["points"]:
                if point.get("optimal_max_sic"):
                    return float(point["optimal_max_sic"])
    return None if record is None else float(record["optimal"]["features"]["max_sic"])


def write_report(study) -> list[Path]:
    """Write report.json, report.md and the plots into ``<root>/<study>/report/``; returns the paths."""
    table = collect(study)
    record = _toy_record(study)
    optimum = _optimum(table, record)
    n_background = None
    if record is not None and record.get("data"):
        n_background = float(np.median([d["n_background_sr"] for d in record["data"]]))
    out = study.folder / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = {"study": study.name, "optimal_max_sic": optimum, "n_background_sr": n_background, "methods": table}
    paths = [
        _replace_text(out / "report.json", json.dumps(summary, indent=2)),
        _replace_text(out / "report.md", markdown(table, optimum)),
        save_figure(max_sic_figure(table, optimum, n_background), out / "max_sic_vs_sb.png"),
    ]
    fractions = sorted({s for m in study.methods.values() for s in m.signal_fractions})
    plotted = min(fractions, key=lambda s: (abs(s - 0.01), -s)) if fractions else None  # ties: the larger
    for name, fig in curve_figures(study, plotted, optimum).items():
        paths.append(save_figure(fig, out / f"{name}.png"))
    return paths
