"""The evaluation report: a folder a person opens (index.html) and a monitor reads (metrics.json).

Per label: roc-<label>.png (the ROC curve of the judged studies, AUROC with its bootstrap interval,
the operating point), calibration-<label>.png (observed rate against mean score per bin, with the
cases per bin), scores-<label>.png (the score distribution per ISO week as a heat map over time,
the threshold drawn across, with each week's count), subgroups-<label>.png (the subgroup table);
and drift.png when the card has a reference (each variable's PSI per week against the threshold).
Matplotlib's object interface (Figure, no pyplot): no display, no global state, safe in threads.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from dicom_ai.domain import DriftCheck, Prediction, Truth
from dicom_ai.monitor.performance import LabelEvaluation, LabelPerformance, iso_weeks

SCORE_BINS = 20
MAX_WEEKS_SHOWN = 26
DPI = 100


@dataclass(frozen=True)
class ReportFiles:
    """What a report wrote: the page, the figures by name, the numbers."""

    folder: Path
    html: Path
    metrics: Path
    figures: dict[str, Path]


def roc_points(scores: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False and true positive rates at every distinct score as threshold (cases >= threshold are positive)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], truth[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]
    tps, fps = np.cumsum(y)[last_of_tie], np.cumsum(1 - y)[last_of_tie]
    positives, negatives = max(int(y.sum()), 1), max(int((1 - y).sum()), 1)
    return np.r_[0.0, fps / negatives], np.r_[0.0, tps / positives]


def summary_table(evaluations: Mapping[str, LabelEvaluation]) -> str:
    """The overall numbers as the CLI prints them: one block per label."""
    lines = []
    for evaluation in evaluations.values():
        o = evaluation.overall
        auroc = "-" if o.auroc is None else f"{o.auroc:.3f}" + (
            f" ({o.auroc_ci[0]:.3f}-{o.auroc_ci[1]:.3f})" if o.auroc_ci else "")
        lines += [
            f"{evaluation.label} (threshold {evaluation.threshold:g}): {o.studies} studies, {o.judged} judged "
            f"present/absent, {o.uncertain} uncertain",
            f"  sensitivity {o.sensitivity.describe()}   specificity {o.specificity.describe()}",
            f"  PPV {o.ppv.describe()}   NPV {o.npv.describe()}",
            f"  agreement {o.agreement.describe()}   AUROC {auroc}   Brier {_fmt(o.brier)}",
            f"  confusion: TP {o.tp}  FP {o.fp}  TN {o.tn}  FN {o.fn}",
        ]
    return "\n".join(lines)


def write_report(folder: Path, *, model: str, title: str, predictions: Sequence[Prediction],
                 evaluations: Mapping[str, LabelEvaluation], drift: Sequence[DriftCheck] = (),
                 psi_threshold: float | None = None, notes: Sequence[str] = ()) -> ReportFiles:
    """Write the report folder (created if needed; our files in it replaced)."""
    folder.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Path] = {}
    for label, evaluation in evaluations.items():
        rows = [p for p in predictions if p.label == label]
        slug = _slug(label)
        figures[f"roc-{slug}"] = _roc(folder / f"roc-{slug}.png", rows, evaluation)
        figures[f"calibration-{slug}"] = _calibration(folder / f"calibration-{slug}.png", evaluation)
        figures[f"scores-{slug}"] = _scores_over_time(folder / f"scores-{slug}.png", rows, evaluation)
        figures[f"subgroups-{slug}"] = _subgroups(folder / f"subgroups-{slug}.png", evaluation)
    if drift:
        figures["drift"] = _drift(folder / "drift.png", drift, psi_threshold)
    metrics = folder / "metrics.json"
    metrics.write_text(json.dumps({
        "model": model, "title": title, "generated_at": time.time(), "predictions": len(predictions),
        "labels": {label: e.as_dict() for label, e in evaluations.items()},
        "drift": [check.__dict__ for check in drift], "notes": list(notes),
    }, indent=2), encoding="utf-8")
    page = folder / "index.html"
    page.write_text(_html(model, title, evaluations, drift, figures, notes, psi_threshold), encoding="utf-8")
    return ReportFiles(folder, page, metrics, figures)


# --- figures ----------------------------------------------------------------------------------


def _save(figure: Figure, path: Path) -> Path:
    figure.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _judged(rows: Sequence[Prediction]) -> tuple[np.ndarray, np.ndarray]:
    judged = [p for p in rows if p.truth in (Truth.PRESENT, Truth.ABSENT)]
    return (np.array([p.score for p in judged], dtype=np.float64),
            np.array([p.truth == Truth.PRESENT for p in judged], dtype=np.int64))


def _roc(path: Path, rows: Sequence[Prediction], evaluation: LabelEvaluation) -> Path:
    figure = Figure(figsize=(5, 5))
    axes = figure.subplots()
    scores, truth = _judged(rows)
    overall = evaluation.overall
    axes.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
    if truth.size and 0 < truth.sum() < truth.size:
        fpr, tpr = roc_points(scores, truth)
        area = "AUROC " + (f"{overall.auroc:.3f}" if overall.auroc is not None else "not stated (too few cases)")
        if overall.auroc_ci:
            area += f" (95% CI {overall.auroc_ci[0]:.3f}-{overall.auroc_ci[1]:.3f})"
        axes.plot(fpr, tpr, color="tab:blue", linewidth=2, label=area)
        sensitivity, specificity = overall.sensitivity.value, overall.specificity.value
        if sensitivity is not None and specificity is not None:
            axes.plot([1 - specificity], [sensitivity], "o", color="tab:red",
                      label=f"threshold {evaluation.threshold:g}: sens {sensitivity:.2f}, spec {specificity:.2f}")
        axes.legend(loc="lower right", fontsize=8)
    else:
        axes.text(0.5, 0.5, "needs judged studies of both classes", ha="center", va="center")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false positive rate)",
             ylabel="sensitivity (true positive rate)",
             title=f"{evaluation.label}: ROC ({int(truth.sum())} positive, {int(truth.size - truth.sum())} negative)")
    axes.set_aspect("equal")
    return _save(figure, path)


def _calibration(path: Path, evaluation: LabelEvaluation) -> Path:
    figure = Figure(figsize=(5, 5.6))
    top, bottom = figure.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    table = [row for row in evaluation.overall.reliability if row["count"]]
    top.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="perfectly calibrated")
    if table:
        top.plot([r["mean_predicted"] for r in table], [r["observed_rate"] for r in table], "o-", color="tab:blue",
                 label=f"observed (Brier {_fmt(evaluation.overall.brier)})")
        bottom.bar([(r["bin_low"] + r["bin_high"]) / 2 for r in table], [r["count"] for r in table], width=0.09,
                   color="tab:gray")
    else:
        top.text(0.5, 0.5, "no judged studies", ha="center", va="center")
    top.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="observed rate of the finding",
            title=f"{evaluation.label}: calibration")
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="predicted probability (score)", ylabel="studies")
    return _save(figure, path)


def _scores_over_time(path: Path, rows: Sequence[Prediction], evaluation: LabelEvaluation) -> Path:
    figure = Figure(figsize=(max(5.0, 1 + 0.45 * MAX_WEEKS_SHOWN / 2), 4.5))
    axes = figure.subplots()
    all_weeks, week_of_row = iso_weeks([p.predicted_at for p in rows])
    weeks = all_weeks[-MAX_WEEKS_SHOWN:]
    if weeks:
        shown = week_of_row >= len(all_weeks) - len(weeks)
        scores = np.fromiter((p.score for p in rows), dtype=np.float64, count=len(rows))[shown]
        # Bin as int(score * SCORE_BINS) did row by row (truncation toward zero), the top bin taking 1.0 and above.
        bins = np.minimum(np.trunc(scores * SCORE_BINS).astype(np.int64), SCORE_BINS - 1)
        columns = week_of_row[shown] - (len(all_weeks) - len(weeks))
        counts = np.zeros((SCORE_BINS, len(weeks)))
        np.add.at(counts, (bins, columns), 1)
        totals = counts.sum(axis=0)
        shares = counts / np.maximum(totals, 1)
        image = axes.imshow(shares, origin="lower", aspect="auto", extent=(-0.5, len(weeks) - 0.5, 0, 1),
                            cmap="viridis", vmin=0, vmax=max(float(shares.max()), 1e-9))
        figure.colorbar(image, ax=axes, label="share of the week's studies")
        axes.axhline(evaluation.threshold, color="tab:red", linewidth=1.5, label=f"threshold {evaluation.threshold:g}")
        axes.set_xticks(range(len(weeks)), [f"{w}\nn={int(t)}" for w, t in zip(weeks, totals)], rotation=45,
                        fontsize=7, ha="right")
        axes.legend(loc="upper right", fontsize=8)
    else:
        axes.text(0.5, 0.5, "no predictions", ha="center", va="center")
    axes.set(ylabel="score (highest probability in the study)", title=f"{evaluation.label}: scores per ISO week")
    return _save(figure, path)


SUBGROUP_COLUMNS = ("studies", "judged", "sensitivity", "specificity", "PPV", "NPV", "agreement", "AUROC")


def subgroup_rows(evaluation: LabelEvaluation) -> list[tuple[str, str, list[str]]]:
    """(subgroup, value, cells) for the table: the overall row first."""
    def cells(p: LabelPerformance) -> list[str]:
        return [str(p.studies), str(p.judged), _share(p.sensitivity.value), _share(p.specificity.value),
                _share(p.ppv.value), _share(p.npv.value), _share(p.agreement.value), _fmt(p.auroc)]

    rows = [("all", "", cells(evaluation.overall))]
    for name, groups in evaluation.subgroups.items():
        rows += [(name, value, cells(p)) for value, p in sorted(groups.items(), key=lambda kv: -kv[1].studies)]
    return rows


SUBGROUP_WIDTHS = (0.13, 0.22, *(0.08,) * len(SUBGROUP_COLUMNS))  # figure fractions per column
ROW_IN = 0.26  # inches per table row


def _subgroups(path: Path, evaluation: LabelEvaluation) -> Path:
    """The subgroup table as a header and one text per column: a matplotlib table (an artist per cell,
    measured twice) took half the report's drawing time at 100,000 predictions."""
    rows = subgroup_rows(evaluation)
    header = ["subgroup", "value", *SUBGROUP_COLUMNS]
    body = [[name, value[:28], *cells] for name, value, cells in rows]
    height = 0.6 + ROW_IN * (len(rows) + 1)
    figure = Figure(figsize=(11, height))
    line = ROW_IN / height  # a row, in figure fractions
    figure.text(0.5, 1 - 0.1 / height, f"{evaluation.label}: by subgroup at threshold {evaluation.threshold:g}",
                fontsize=10, ha="center", va="top")
    x, top = 0.01, 1 - 0.45 / height
    for i, (title, width) in enumerate(zip(header, SUBGROUP_WIDTHS)):
        figure.text(x, top, title, fontsize=8, fontweight="bold", ha="left", va="top")
        figure.text(x, top - 1.2 * line, "\n".join(cells[i] for cells in body), fontsize=8, ha="left", va="top",
                    linespacing=1.6)
        x += width
    figure.add_artist(Line2D([0.005, x - 0.01], [top - 0.85 * line] * 2, color="0.6", linewidth=0.8))
    return _save(figure, path)


def _drift(path: Path, drift: Sequence[DriftCheck], psi_threshold: float | None) -> Path:
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    weeks = sorted({c.week for c in drift})
    for variable in sorted({c.variable for c in drift}):
        points = sorted((c.week, c.psi) for c in drift if c.variable == variable)
        axes.plot([weeks.index(w) for w, _ in points], [max(v, 1e-3) for _, v in points], "o-", label=variable)
    if psi_threshold is not None:
        axes.axhline(psi_threshold, color="tab:red", linestyle="--", label=f"drift_psi {psi_threshold:g}")
    axes.set_yscale("log")
    axes.set_xticks(range(len(weeks)), weeks, rotation=45, fontsize=7, ha="right")
    axes.set(ylabel="PSI against the card's reference", title="drift per ISO week")
    axes.legend(fontsize=7, loc="upper left")
    return _save(figure, path)


# --- the page ---------------------------------------------------------------------------------


def _html(model: str, title: str, evaluations: Mapping[str, LabelEvaluation], drift: Sequence[DriftCheck],
          figures: Mapping[str, Path], notes: Sequence[str], psi_threshold: float | None) -> str:
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}img{max-width:100%;margin:8px 0}"
             ".warn{color:#a00}</style></head><body>",
             f"<h1>{e(title)}</h1><p>Model <b>{e(model)}</b>; generated {e(time.strftime('%Y-%m-%d %H:%M:%S'))}.</p>"]
    parts += [f"<p class='warn'>{e(note)}</p>" for note in notes]
    for label, evaluation in evaluations.items():
        slug = _slug(label)
        parts.append(f"<h2>{e(label)}</h2><pre>{e(summary_table({label: evaluation}))}</pre>")
        parts.append("<table><tr><th>subgroup</th><th>value</th>" + "".join(f"<th>{c}</th>" for c in SUBGROUP_COLUMNS)
                     + "</tr>")
        for name, value, cells in subgroup_rows(evaluation):
            parts.append(f"<tr><td>{e(name)}</td><td>{e(value)}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells)
                         + "</tr>")
        parts.append("</table>")
        for kind in ("roc", "calibration", "scores", "subgroups"):
            name = f"{kind}-{slug}"
            if name in figures:
                parts.append(f"<div><img src='{e(figures[name].name)}' alt='{e(name)}'></div>")
    if drift:
        flagged = [c for c in drift if c.flagged]
        parts.append(f"<h2>Drift against the card's reference</h2><p>{len(flagged)} flagged of {len(drift)} checks "
                     f"(PSI at or above {psi_threshold:g} and, for numeric variables, KS p &lt; 0.01).</p>"
                     if psi_threshold is not None else "<h2>Drift</h2>")
        parts.append("<table><tr><th>week</th><th>variable</th><th>cases</th><th>PSI</th><th>KS p</th><th></th></tr>")
        for c in drift:
            ks = "-" if c.ks_p is None else f"{c.ks_p:.2g}"
            parts.append(f"<tr><td>{e(c.week)}</td><td>{e(c.variable)}</td><td>{c.cases}</td><td>{c.psi:.3f}</td>"
                         f"<td>{ks}</td><td class='warn'>{'DRIFT' if c.flagged else ''}</td></tr>")
        parts.append("</table>")
        if "drift" in figures:
            parts.append(f"<div><img src='{e(figures['drift'].name)}' alt='drift'></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "label"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"

