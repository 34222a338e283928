# This file is part of trail_detect.
#
# Developed for the LSST Data Management System.
# This product includes software developed by the LSST Project
# (https://www.lsst.org).
# See the COPYRIGHT file at the top-level directory of this distribution
# for details of code ownership.
#
# This program is free software: you can redistribute it and/or modify
# it under the terms of the GNU General Public License as published by
# the Free Software Foundation, either version 3 of the License, or
# (at your option) any later version.
#
# This program is distributed in the hope that it will be useful,
# but WITHOUT ANY WARRANTY; without even the implied warranty of
# MERCHANTABILITY or FITNESS FOR A PARTICULAR PURPOSE.  See the
# GNU General Public License for more details.
#
# You should have received a copy of the GNU General Public License
# along with this program.  If not, see <https://www.gnu.org/licenses/>.

"""A self-contained HTML report of trail-detection metrics."""

from __future__ import annotations

__all__ = ("write_report",)

import base64
import html
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return "n/a"
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _completeness_rows(curves: Mapping) -> tuple[list[str], list[list[Any]]]:
    detectors = [
        name
        for name in ("cnn", "stack", "stack_found_single", "hough", "ideal", "ideal_shape")
        if name in curves
    ]
    header = ["bin"] + [f"{name} completeness" for name in detectors] + ["trails"]
    rows = []
    for k, label in enumerate(curves["labels"]):
        row = [label] + [curves[name]["completeness"][k] for name in detectors]
        row.append(curves[detectors[0]]["n"][k] if detectors else 0)
        rows.append(row)
    return header, rows


def write_report(metrics: Mapping, out_dir: str | os.PathLike, *, title: str = "Trail detection") -> Path:
    """Write ``index.html`` (plots embedded), the plots as PNGs and ``metrics.json``.

    Parameters
    ----------
    metrics : `dict`
        From `~.metrics.evaluate_matches` (``trail_detection_metrics``),
        optionally with a ``star_detection`` entry
        (``star_detection_metrics``) and a ``context`` entry (a dict of
        free-form lines: collections, model, timings).
    out_dir : path-like
        Created if needed.
    title : `str`, optional
        Page title.

    Returns
    -------
    path : `pathlib.Path`
        The HTML file.
    """
    from .metrics import headline_table
    from .plots import make_all_plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    trail_metrics = {k: v for k, v in metrics.items() if k not in ("star_detection", "context")}
    plots = make_all_plots(trail_metrics, out)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str, allow_nan=True))
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #aaa;padding:3px 8px;"
        "text-align:right}th{background:#eee}img{max-width:100%}.met{color:#060}.unmet{color:#a00}"
        "pre{background:#f6f6f6;padding:1em}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    context = metrics.get("context") or {}
    if context:
        parts.append(_table(["", ""], [[k, v] for k, v in context.items()]))
    parts.append(
        f"<p>{_fmt(trail_metrics.get('n_truth'))} injected trails on {_fmt(trail_metrics.get('n_images'))} "
        f"images ({_fmt(trail_metrics.get('area_4k_detectors'))} 4k x 4k-equivalent detectors); CNN score "
        f"cut {_fmt(trail_metrics.get('min_score'))}; ideal detector Phi(nu_opt - "
        f"{_fmt(trail_metrics.get('ideal_threshold'))}); the shape-limited ideal detector (ideal_shape) "
        "must also tell each trail from a point source of the same flux, which short trails do not allow "
        "at low SNR.</p>"
    )
    parts.append("<h2>Headline</h2><pre>" + html.escape(headline_table(trail_metrics)) + "</pre>")
    goals = trail_metrics.get("goals", [])
    if goals:
        rows = [
            f"<tr><td style='text-align:left'>{html.escape(g['goal'])}</td><td>{_fmt(g.get('target'))}</td>"
            f"<td>{_fmt(g.get('measured'))}</td><td class='{'met' if g.get('met') else 'unmet'}'>"
            f"{'met' if g.get('met') else 'not met'}</td></tr>"
            for g in goals
        ]
        parts.append(
            "<h2>Goals</h2><table><thead><tr><th>goal</th><th>target</th><th>measured</th><th></th></tr>"
            "</thead><tbody>" + "".join(rows) + "</tbody></table>"
        )
    for key, heading in (
        ("completeness_nu_det", "Completeness against nu_det"),
        ("completeness_nu_opt", "Completeness against nu_opt"),
    ):
        if key in trail_metrics:
            header, rows = _completeness_rows(trail_metrics[key])
            parts.append(f"<h2>{heading}</h2>" + _table(header, rows))
    offsets = trail_metrics.get("offset_from_ideal")
    if offsets:
        rows = [
            [label, offsets["nu50"][k], offsets["offset"][k], offsets["offset_err"][k], offsets["n"][k]]
            for k, label in enumerate(offsets["labels"])
        ]
        parts.append(
            "<h2>50% point against the ideal detector, per length bin (px)</h2>"
            + _table(["length", "CNN nu_opt 50%", "offset (sigma)", "error", "trails"], rows)
        )
    fp = trail_metrics.get("false_positives") or {}
    if fp:
        parts.append(
            "<h2>False positives</h2>"
            + _table(
                ["per 4k detector", "purity", "false positives", "true positives", "fragments"],
                [
                    [
                        fp.get("fp_per_4k_detector"),
                        fp.get("purity"),
                        fp.get("n_false_positives"),
                        fp.get("n_true_positives"),
                        fp.get("n_fragments"),
                    ]
                ],
            )
        )
        classes = fp.get("fp_classes") or {}
        if classes:
            parts.append(_table(["class", "count"], [[k, v] for k, v in classes.items()]))
    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode()
        parts.append(
            f"<h2>{html.escape(name.replace('_', ' '))}</h2><img src='data:image/png;base64,{data}'>"
        )
    stars = metrics.get("star_detection")
    if stars:
        parts.append(
            "<h2>Star detector</h2><pre>"
            + html.escape(json.dumps(stars.get("goals", stars), indent=1, default=str))
            + "</pre>"
        )
    parts.append("</body></html>")
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path
