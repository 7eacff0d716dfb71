"""Evaluation report: PNG charts and a self-contained HTML page (no network needed).

Takes the evaluation as a mapping with the field names of the protobuf
`Evaluation` message (or the trainer's evaluation.json, a superset), so the
trainer and the CLI render the same page.
"""

from __future__ import annotations

import html
import io
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any


def _charts(
    evaluation: Mapping[str, Any], out_dir: Path, health: Mapping[str, Any] | None = None
) -> list[tuple[Path, str]]:
    """Draw the charts: each as a PNG file and as inline SVG markup (text kept as text,
    so a browser, a screen reader or a test can read the axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[tuple[Path, str]] = []

    def save(fig: Any, name: str) -> None:
        path = out_dir / name
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        svg = io.StringIO()
        with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
            fig.savefig(svg, format="svg")
        plt.close(fig)
        markup = svg.getvalue()
        paths.append((path, markup[markup.index("<svg") :]))

    deciles = evaluation.get("deciles") or []
    if deciles:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        xs = [0] + [d["decile"] * 10 for d in deciles]
        gains = [0.0] + [100 * d["cumulative_gain"] for d in deciles]
        ax1.plot(xs, gains, marker="o", label="model")
        ax1.plot([0, 100], [0, 100], linestyle="--", color="grey", label="random")
        ax1.set_xlabel("% of profiles (highest scores first)")
        ax1.set_ylabel("% of goal profiles captured")
        ax1.set_title("Cumulative gains")
        ax1.legend()
        ax2.bar([d["decile"] for d in deciles], [d["lift"] for d in deciles], color="#3b7dd8")
        ax2.axhline(1.0, color="grey", linestyle="--")
        ax2.set_xlabel("Decile (1 = top 10 %)")
        ax2.set_ylabel("Lift")
        ax2.set_title("Lift by decile")
        save(fig, "gains.png")
    calibration = evaluation.get("calibration") or []
    if calibration:
        fig, ax = plt.subplots(figsize=(5, 4))
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect")
        ax.plot(
            [c["predicted"] for c in calibration],
            [c["observed"] for c in calibration],
            marker="o",
            label="model",
        )
        ax.set_xlabel("Predicted probability")
        ax.set_ylabel("Observed goal rate")
        ax.set_title("Calibration")
        ax.legend()
        save(fig, "calibration.png")
    histogram = evaluation.get("score_histogram") or []
    if histogram:
        fig, ax = plt.subplots(figsize=(6, 4))
        colors = [
            "#c0392b" if h["low"] < 25 else "#e67e22" if h["low"] < 75 else "#27ae60"
            for h in histogram
        ]
        ax.bar(
            [h["low"] for h in histogram],
            [h["count"] for h in histogram],
            width=[h["high"] - h["low"] for h in histogram],
            align="edge",
            color=colors,
            edgecolor="white",
        )
        ax.set_xlabel("Score (0–100): LOW < 25 ≤ MEDIUM < 75 ≤ HIGH")
        ax.set_ylabel("Profiles")
        ax.set_title("Score distribution")
        save(fig, "score_histogram.png")
    factors = (evaluation.get("global_factors") or [])[:15]
    if factors:
        fig, ax = plt.subplots(figsize=(8, 0.35 * len(factors) + 1.2))
        labels = [f["description"] for f in reversed(factors)]
        ax.barh(labels, [f["weight"] for f in reversed(factors)], color="#8e44ad")
        ax.set_xlabel("Mean |impact| on the log-odds (SHAP)")
        ax.set_title("Most influential factors")
        save(fig, "factors.png")
    if health is not None:
        _health_chart(health, save)
    return paths


def _health_chart(health: Mapping[str, Any], save: Any) -> None:
    """Realized vs validation AUC and score PSI over the runs' as-of dates (oldest left)."""
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    runs = list(reversed(health.get("runs") or []))
    if not runs:
        return
    when = [datetime.fromisoformat(r["run"]["as_of"]) for r in runs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    closed = [(t, r["realized"]["auc"]) for t, r in zip(when, runs, strict=True) if r["realized"]]
    if closed:
        ax1.plot(*zip(*closed, strict=True), marker="o", label="realized AUC")
    ax1.plot(when, [r["validation_auc"] or None for r in runs], "--", marker="s", color="grey")
    ax1.lines[-1].set_label("validation AUC")
    lowest = min([0.5] + [auc for _, auc in closed if auc == auc])  # NaN never equals itself
    ax1.set_ylim(max(0.0, lowest - 0.1), 1.0)
    ax1.set_xlabel("Run as of (realized once its outcome window has closed)")
    ax1.set_ylabel("AUC")
    ax1.set_title("Realized vs validation AUC")
    ax1.legend()
    drifted = [(t, r["drift"]["score_psi"]) for t, r in zip(when, runs, strict=True) if r["drift"]]
    if drifted:
        ax2.plot(*zip(*drifted, strict=True), marker="o", color="#8e44ad", label="score PSI")
    threshold = float(health.get("psi_threshold") or 0.25)
    ax2.axhline(threshold, color="#c0392b", linestyle="--", label=f"retrain above {threshold:g}")
    ax2.set_ylim(0, max([threshold * 1.5] + [p for _, p in drifted]))
    ax2.set_xlabel("Run as of (against the run before)")
    ax2.set_ylabel("PSI")
    ax2.set_title("Score drift between consecutive runs")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.set_xlim(min(when) - timedelta(days=3), max(when) + timedelta(days=3))
        ax.xaxis.set_major_locator(mdates.AutoDateLocator(maxticks=6))  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))  # type: ignore[no-untyped-call]
        ax.tick_params(axis="x", labelrotation=30)
    save(fig, "model_health.png")


def _health_section(health: Mapping[str, Any] | None, figure: str) -> str:
    """The model health heading, advice and per-run table (empty without a report)."""
    if health is None:
        return ""
    if health.get("retrain_recommended"):
        advice = (
            "<p class='poor'>Retrain recommended:</p><ul>"
            + "".join(f"<li>{html.escape(r)}</li>" for r in health.get("reasons") or [])
            + "</ul>"
        )
    else:
        advice = "<p class='good'>No retrain needed.</p>"
    rows = []
    for r in health.get("runs") or []:
        realized, drift = r["realized"] or {}, r["drift"] or {}
        rows.append(
            [
                (r["run"]["as_of"] or "")[:10],
                r["run"]["model_version"],
                "closed" if r["window_closed"] else "open",
                _fmt(realized.get("auc")),
                _fmt(r["validation_auc"] or None),
                _fmt(realized.get("lift_top_decile"), 2),
                _fmt(realized.get("ece")),
                _fmt(drift.get("score_psi")),
                ", ".join(f"{f['code']} {f['psi']:.3f}" for f in drift.get("top_features") or []),
            ]
        )
    table = _table(
        [
            "As of",
            "Model",
            "Outcome window",
            "Realized AUC",
            "Validation AUC",
            "Lift top 10 %",
            "ECE",
            "Score PSI",
            "Most drifting features (PSI)",
        ],
        rows,
    )
    return f"<h2 id='model-health'>Model health over time</h2>{advice}{figure}{table}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def write_report(
    evaluation: Mapping[str, Any], out_dir: Path | str, health: Mapping[str, Any] | None = None
) -> tuple[Path, list[Path]]:
    """Write PNG charts and a self-contained ``report.html`` (the charts inline as SVG);
    returns (html, pngs). `health` (the `ModelHealth` message as plain values) adds
    the model health section."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    charts = _charts(evaluation, out, health)
    pngs = [png for png, _ in charts]
    title = "Model evaluation"
    if evaluation.get("instance"):
        title = f"{evaluation['instance']} v{evaluation.get('version', '?')} — model evaluation"
    quality = str(evaluation.get("quality", ""))
    metrics = _table(
        ["AUC", "PR-AUC", "Log loss", "Brier", "Validation rows", "Goal rate", "Quality"],
        [
            [
                _fmt(evaluation.get("auc")),
                _fmt(evaluation.get("pr_auc")),
                _fmt(evaluation.get("log_loss")),
                _fmt(evaluation.get("brier")),
                _fmt(evaluation.get("validation_rows")),
                f"{100 * float(evaluation.get('positive_rate') or 0):.1f} %",
                quality,
            ]
        ],
    )
    suggestions = "".join(f"<li>{html.escape(s)}</li>" for s in evaluation.get("suggestions") or [])
    figures = {
        png.stem: f'<figure data-chart="{html.escape(png.stem)}">{svg}</figure>'
        for png, svg in charts
    }
    health_figure = figures.pop("model_health", "")
    images = "".join(figures.values())
    deciles = _table(
        ["Decile", "Rows", "Goal rate", "Lift", "Cumulative gain"],
        [
            [
                d["decile"],
                d.get("rows", "–"),
                f"{100 * d['positive_rate']:.1f} %",
                f"{d['lift']:.2f}",
                f"{100 * d['cumulative_gain']:.1f} %",
            ]
            for d in evaluation.get("deciles") or []
        ],
    )
    factor_rows = [
        [f["description"], f["code"], f"{f['weight']:.4f}", f"{100 * f.get('share', 0.0):.0f} %"]
        for f in evaluation.get("global_factors") or []
    ]
    factors = _table(["Factor", "Code", "Mean |impact|", "Share in top 5"], factor_rows)
    buckets = ""
    for entry in evaluation.get("bucket_factors") or []:
        rows = [
            [f["description"], f"{f['weight']:.4f}", f"{f.get('mean_impact', 0.0):+.4f}"]
            for f in entry.get("factors", [])
        ]
        buckets += (
            f"<h3>{html.escape(str(entry['bucket']))} ({entry['profiles']} profiles)</h3>"
            + _table(["Factor", "Mean |impact|", "Mean impact"], rows)
        )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}}
table{{border-collapse:collapse;margin:0.5em 0 1.5em}}
th,td{{border:1px solid #ccc;padding:4px 8px;text-align:left}}
th{{background:#f3f3f3}} figure{{display:inline-block;margin:0 1em 1em 0}}
.poor{{color:#c0392b}} .good{{color:#27ae60}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Quality: <span class="{"poor" if quality == "POOR" else "good"}">{html.escape(quality)}</span></h2>
{metrics}
{f"<h3>Suggested changes</h3><ul>{suggestions}</ul>" if suggestions else ""}
<h2>Charts</h2>
{images}
<h2>Lift and gains by decile</h2>
{deciles}
<h2>Influential factors</h2>
{factors}
<h2>Top factors per bucket</h2>
{buckets}
{_health_section(health, health_figure)}
</body></html>
"""
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path, pngs
