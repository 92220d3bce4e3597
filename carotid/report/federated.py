"""The coordinator's report.html of a federated run: per-round curves of each site and of all sites together
(training loss, validation person AUC, validation loss), and the metrics.csv table. Counts and aggregate numbers
only: the coordinator never holds a person ID."""

from __future__ import annotations

import base64
import io
from html import escape

from carotid.report.page import document, table
from carotid.report.plots import _integer_ticks, _number, _pyplot, new_figure

CURVES = (("train_loss", "training loss"), ("val_person_auc", "validation person AUC"), ("val_loss", "validation loss"))
ALL_SITES = "all"  # the site of metrics.csv's aggregate row: person-weighted means over the sites that answered


def curves_png(rows: list[dict]) -> bytes:
    """One panel per number, one line per site (a missing round is a gap), the all-sites line in black."""
    sites = list(dict.fromkeys(str(r["site"]) for r in rows))
    fig, axes = new_figure(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    for axis, (key, title) in zip(axes, CURVES):
        for site in sites:
            points = [(int(r["round"]), _number(r.get(key))) for r in rows if str(r["site"]) == site]
            rounds = [p[0] for p in points]
            values = [float("nan") if p[1] is None else p[1] for p in points]
            style = {"color": "black", "linewidth": 2.2} if site == ALL_SITES else {"marker": "o", "linewidth": 1.2}
            axis.plot(rounds, values, label=site, **style)
        axis.set_title(title)
        axis.set_xlabel("round")
        axis.xaxis.set_major_locator(_integer_ticks())
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def federated_report(rows: list[dict], monitor: str, strategy: str, run_name: str) -> str:
    """The whole page (self-contained: the figure is embedded)."""
    columns = ["round", "site", "status", "train_persons", "train_loss", "val_persons", "val_person_auc", "val_loss"]
    body = [[_cell(r.get(c)) for c in columns] for r in rows]
    classes = ["total" if str(r["site"]) == ALL_SITES else "" for r in rows]
    picture = base64.b64encode(curves_png(rows)).decode("ascii") if rows else ""
    parts = [
        f"<h1>Federated run {escape(run_name)}</h1>",
        f"<p>Strategy: {escape(strategy)}. Each round every site trains the global weights on its own persons; the "
        "coordinator averages the weights (weighted by training persons) and each site scores the averaged weights "
        "on its own validation persons. The <b>all</b> line is the person-weighted mean; "
        f"<code>models/best_model.pth</code> is the round with the best all-sites {escape(monitor)}. "
        "No person ID, path or per-person row left any site.</p>",
        f'<img src="data:image/png;base64,{picture}" alt="per-round curves per site">' if picture else "",
        "<h2>Rounds × sites (metrics.csv)</h2>",
        table(columns, body, classes),
    ]
    return document(f"carotid federated run {run_name}", parts)


def _cell(value):
    number = _number(value)
    if number is None:
        return "" if value in (None, "") else str(value)
    return int(number) if number.is_integer() else round(number, 4)
