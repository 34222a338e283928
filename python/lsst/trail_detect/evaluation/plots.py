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

"""Figures of the trail-detection metrics made by
`lsst.trail_detect.evaluation.metrics.evaluate_matches`.

Each function takes the metrics dict and an output path, writes one PNG
with matplotlib's Agg backend and closes its figure.
"""

from __future__ import annotations

__all__ = (
    "make_all_plots",
    "plot_calibration",
    "plot_completeness",
    "plot_completeness_by_length",
    "plot_fp_classes",
    "plot_roc_pr",
)

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats

_STYLES = {
    "cnn": {"label": "CNN", "color": "C0", "marker": "o"},
    "stack": {"label": "stack (found or broken)", "color": "C1", "marker": "s"},
    "stack_found_single": {"label": "stack (one source)", "color": "C1", "marker": "s", "mfc": "none"},
    "hough": {"label": "Hough", "color": "C2", "marker": "^"},
    "ideal": {"label": "ideal matched filter", "color": "k", "marker": "x"},
    "ideal_shape": {"label": "ideal, telling trails from stars", "color": "0.45", "marker": "+"},
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _array(values: Any) -> np.ndarray:
    return np.asarray([math.nan if v is None else v for v in values], dtype=float)


def _x_positions(curve: Mapping) -> np.ndarray:
    """Mean value of each bin, the bin centre where the bin is empty."""
    mean = _array(curve.get("mean_value", curve["centers"]))
    return np.where(np.isfinite(mean), mean, _array(curve["centers"]))


def _draw_curves(
    ax: Any, curves: Mapping, threshold: float | None = None, smooth_ideal: bool = False
) -> None:
    """Binned completeness of every detector in ``curves`` with Wilson error bars."""
    for key, style in _STYLES.items():
        if key not in curves:
            continue
        curve = curves[key]
        x = _x_positions(curve)
        c = _array(curve["completeness"])
        ok = np.isfinite(c)
        if not np.any(ok):
            continue
        if key in ("ideal", "ideal_shape"):
            if key == "ideal" and smooth_ideal and threshold is not None:
                continue
            ax.plot(x[ok], c[ok], ls="--", color=style["color"], marker=style["marker"], label=style["label"])
            continue
        yerr = np.vstack([c - _array(curve["lower"]), _array(curve["upper"]) - c])[:, ok]
        ax.errorbar(
            x[ok],
            c[ok],
            yerr=np.clip(yerr, 0, None),
            ls="-",
            color=style["color"],
            marker=style["marker"],
            mfc=style.get("mfc", style["color"]),
            capsize=2,
            label=style["label"],
        )
    if smooth_ideal and threshold is not None:
        xmax = threshold + 6.0
        for key in ("cnn", "stack", "hough"):
            if key in curves:
                c = _array(curves[key]["completeness"])
                below = np.nonzero(np.isfinite(c) & (c < 0.95))[0]
                if below.size:
                    xmax = max(xmax, float(_array(curves[key]["edges"])[below[-1] + 1]) + 2.0)
        xmax = min(xmax, 40.0)
        grid = np.linspace(0.0, xmax, 300)
        ax.set_xlim(0.0, xmax)
        ax.plot(
            grid,
            stats.norm.cdf(grid - threshold),
            ls="--",
            color="k",
            label=f"ideal, Phi(nu_opt - {threshold:g})",
        )
    ax.set_ylim(-0.03, 1.03)
    ax.set_ylabel("completeness")
    ax.grid(alpha=0.3)


def plot_completeness(metrics: Mapping, path: str | os.PathLike) -> str:
    """Completeness of the CNN, the stack, Hough and the ideal detector versus ``nu_det`` and ``nu_opt``.

    Parameters
    ----------
    metrics : `dict`
        Output of `~lsst.trail_detect.evaluation.metrics.evaluate_matches`.
    path : `str` or path-like
        PNG to write.

    Returns
    -------
    path : `str`
        The file written.
    """
    plt = _pyplot()
    threshold = float(metrics.get("ideal_threshold", 6.0))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    _draw_curves(axes[0], metrics["completeness_nu_det"])
    edges = _array(metrics["completeness_nu_det"]["edges"])
    if np.all(edges > 0):
        axes[0].set_xscale("log")
        axes[0].set_xlim(edges[0] * 0.9, edges[-1] * 1.1)
    axes[0].set_xticks(edges, [f"{edge:g}" for edge in edges])
    axes[0].minorticks_off()
    axes[0].set_xlabel("nu_det (stack-like detection SNR)")
    for edge in edges:
        axes[0].axvline(edge, color="0.8", lw=0.8, zorder=0)
    axes[0].set_title(f"score >= {float(metrics.get('min_score', 0.0)):g}")
    _draw_curves(axes[1], metrics["completeness_nu_opt"], threshold=threshold, smooth_ideal=True)
    fit = metrics["completeness_nu_opt"].get("fits", {}).get("cnn", {})
    nu50 = fit.get("nu50", math.nan)
    if nu50 is not None and np.isfinite(nu50):
        grid = np.linspace(*axes[1].get_xlim(), 300)
        axes[1].plot(grid, stats.norm.cdf((grid - nu50) / fit["width"]), color="C0", alpha=0.5, lw=1)
        axes[1].set_title(
            f"CNN nu50 = {nu50:.2f} +- {fit.get('nu50_err', math.nan):.2f} (ideal {threshold:g})"
        )
    axes[1].set_xlabel("nu_opt (matched-filter SNR)")
    axes[1].legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_completeness_by_length(metrics: Mapping, path: str | os.PathLike) -> str:
    """CNN and stack completeness versus ``nu_opt`` per trail-length bin, with the ideal curve.

    Parameters
    ----------
    metrics : `dict`
        Output of `~lsst.trail_detect.evaluation.metrics.evaluate_matches`.
    path : `str` or path-like
        PNG to write.

    Returns
    -------
    path : `str`
        The file written.
    """
    plt = _pyplot()
    by_length = metrics["completeness_by_length"]
    offsets = metrics.get("offset_from_ideal", {})
    threshold = float(metrics.get("ideal_threshold", 6.0))
    nbin = len(by_length["bins"])
    ncol = min(nbin, 2) or 1
    nrow = max(1, math.ceil(nbin / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(6 * ncol, 4 * nrow), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        if i >= nbin:
            ax.set_visible(False)
            continue
        curves = {k: v for k, v in by_length["bins"][i].items() if k not in ("stack_found_single",)}
        _draw_curves(ax, curves, threshold=threshold, smooth_ideal=True)
        title = f"length {by_length['labels'][i]} px"
        if offsets:
            offset, err, n = offsets["offset"][i], offsets["offset_err"][i], offsets["n"][i]
            title += f" (n={n})"
            if offset is not None and np.isfinite(offset):
                title += f": offset {offset:+.2f} +- {err:.2f} sigma"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("nu_opt")
        if i == 0:
            ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def plot_roc_pr(metrics: Mapping, path: str | os.PathLike) -> str:
    """ROC, precision-recall and completeness versus false positives per 4k detector.

    Parameters
    ----------
    metrics : `dict`
        Output of `~lsst.trail_detect.evaluation.metrics.evaluate_matches`.
    path : `str` or path-like
        PNG to write.

    Returns
    -------
    path : `str`
        The file written.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for level, ls in (("object", "-"), ("pixel", "--")):
        roc = metrics.get("roc", {}).get(level)
        if roc:
            # The last point (threshold -inf) only ranks never-detected items; it is not a cut.
            finite = np.isfinite(_array(roc["thresholds"])) | (_array(roc["thresholds"]) > 0)
            axes[0].plot(
                _array(roc["fpr"])[finite],
                _array(roc["tpr"])[finite],
                ls=ls,
                label=f"{level} (AUC {_num(roc['auc'])}"
                + (
                    f", detections only {_num(roc['auc_detections_only'])})"
                    if "auc_detections_only" in roc
                    else ")"
                ),
            )
        pr = metrics.get("pr", {}).get(level)
        if pr:
            axes[1].plot(
                _array(pr["recall"]),
                _array(pr["precision"]),
                ls=ls,
                label=f"{level} (AP {_num(pr['average_precision'])})",
            )
    axes[0].plot([0, 1], [0, 1], color="0.7", lw=0.8)
    axes[0].set_xlabel("false positive rate (object: fraction of FP detections kept)")
    axes[0].set_ylabel("true positive rate (object: over all truths)")
    axes[1].set_xlabel("recall")
    axes[1].set_ylabel("precision")
    roc = metrics.get("roc", {}).get("object")
    if roc and "fp_per_4k" in roc:
        fp = _array(roc["fp_per_4k"])
        thresholds = _array(roc["thresholds"])
        ok = np.isfinite(fp) & (fp > 0) & (np.isfinite(thresholds) | (thresholds > 0))
        axes[2].plot(fp[ok], _array(roc["tpr"])[ok], color="C0")
        axes[2].set_xscale("log")
        axes[2].axvline(10.0, color="C3", ls=":", label="10 FP per detector")
        axes[2].legend(fontsize=8)
    axes[2].set_xlabel("false positives per 4k x 4k detector")
    axes[2].set_ylabel("completeness (all truths)")
    for ax in axes:
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return _save(fig, path)


def _num(value: Any) -> str:
    return "nan" if value is None or not np.isfinite(value) else f"{value:.3f}"


def plot_calibration(metrics: Mapping, path: str | os.PathLike) -> str:
    """Reliability diagram of the calibrated scores with the counts per bin.

    Parameters
    ----------
    metrics : `dict`
        Output of `~lsst.trail_detect.evaluation.metrics.evaluate_matches`.
    path : `str` or path-like
        PNG to write.

    Returns
    -------
    path : `str`
        The file written.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(6, 7), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    axes[0].plot([0, 1], [0, 1], color="0.7", lw=0.8)
    for level, marker in (("object", "o"), ("pixel", "s")):
        cal = metrics.get("calibration", {}).get(level)
        if not cal:
            continue
        pred, real = _array(cal["mean_predicted"]), _array(cal["fraction_real"])
        ok = np.isfinite(pred) & np.isfinite(real)
        axes[0].plot(pred[ok], real[ok], marker=marker, label=f"{level} (ECE {_num(cal['ece'])})")
        edges = _array(cal["edges"])
        counts = _array(cal["counts"])
        axes[1].stairs(np.maximum(counts, 0.5), edges, label=level)
    axes[0].set_ylabel("fraction real")
    axes[0].set_xlim(0, 1)
    axes[0].set_ylim(0, 1)
    axes[0].grid(alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, loc="upper left")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("calibrated score")
    axes[1].set_ylabel("count")
    return _save(fig, path)


def plot_fp_classes(metrics: Mapping, path: str | os.PathLike) -> str:
    """False positives per 4k detector by class at the operating point.

    Parameters
    ----------
    metrics : `dict`
        Output of `~lsst.trail_detect.evaluation.metrics.evaluate_matches`.
    path : `str` or path-like
        PNG to write.

    Returns
    -------
    path : `str`
        The file written.
    """
    plt = _pyplot()
    classes = dict(metrics.get("fp_classes", {}))
    n_4k = float(metrics.get("area_4k_detectors", math.nan) or math.nan)
    names = sorted(classes, key=lambda name: -classes[name])
    rates = [classes[name] / n_4k if np.isfinite(n_4k) and n_4k > 0 else classes[name] for name in names]
    fig, ax = plt.subplots(figsize=(7, 4))
    if names:
        ax.bar(names, rates, color="C3")
        ax.tick_params(axis="x", rotation=30)
    else:
        ax.text(0.5, 0.5, "no false positives", ha="center", va="center", transform=ax.transAxes)
    total = metrics.get("false_positives_per_4k_detector", math.nan)
    ax.set_title(
        f"FP per 4k detector: {_num(total)}, purity {_num(metrics.get('purity', math.nan))} "
        f"(score >= {float(metrics.get('min_score', 0.0)):g})",
        fontsize=10,
    )
    ax.set_ylabel("false positives per 4k x 4k detector")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def make_all_plots(metrics: Mapping, out_dir: str | os.PathLike) -> dict[str, str]:
    """Write every metrics figure into a folder.

    Parameters
    ----------
    metrics : `dict`
        Output of `~lsst.trail_detect.evaluation.metrics.evaluate_matches`.
    out_dir : `str` or path-like
        Folder for the PNGs (created if needed).

    Returns
    -------
    paths : `dict` [`str`, `str`]
        Path of each figure by name: ``completeness``,
        ``completeness_by_length``, ``roc_pr``, ``calibration`` and
        ``fp_classes``.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    makers = {
        "completeness": plot_completeness,
        "completeness_by_length": plot_completeness_by_length,
        "roc_pr": plot_roc_pr,
        "calibration": plot_calibration,
        "fp_classes": plot_fp_classes,
    }
    return {name: maker(metrics, os.path.join(out_dir, f"{name}.png")) for name, maker in makers.items()}
