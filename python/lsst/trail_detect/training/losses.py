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

"""Loss functions for trail segmentation and star (point-source) detection.

All functions take raw network outputs (logits), are differentiable, accept
optional per-pixel weights (0 ignores a pixel: masked, edge or padding
pixels) and return a finite value, 0, when every weight is 0.  Pixels with
zero weight never contribute, even if their targets are NaN.

Shapes: logits ``(N, C, H, W)`` (usually ``C = 1``); targets either the
same shape or ``(N, H, W)`` when ``C = 1``; weights anything that broadcasts
to the logits after, if it has one dimension fewer, inserting the channel
axis (``(N, H, W)`` weights of shard tiles work as they are).
"""

from __future__ import annotations

__all__ = (
    "SegmentationLoss",
    "StarDetectionLoss",
    "centernet_focal_loss",
    "focal_tversky_loss",
    "instance_balanced_weights",
    "offset_l1_loss",
    "pos_weight_from_fraction",
    "soft_dice_loss",
    "weighted_bce",
)

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-8


def _align(tensor: torch.Tensor, like: torch.Tensor, what: str) -> torch.Tensor:
    """Return ``tensor`` as a float tensor of the shape of ``like``.

    A tensor with one dimension fewer gets a channel axis at position 1;
    otherwise standard broadcasting applies.
    """
    tensor = torch.as_tensor(tensor, device=like.device)
    if not tensor.is_floating_point():
        tensor = tensor.float()
    tensor = tensor.to(like.dtype)
    if tensor.dim() == like.dim() - 1 and like.dim() >= 2:
        tensor = tensor.unsqueeze(1)
    try:
        return tensor.expand_as(like)
    except RuntimeError as err:
        raise ValueError(f"{what} of shape {tuple(tensor.shape)} does not fit {tuple(like.shape)}.") from err


def _prepare(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return target and weight aligned to ``logits``; zero-weight targets set to 0."""
    target = _align(target, logits, "target")
    if weight is None:
        weight = torch.ones_like(logits)
    else:
        weight = _align(weight, logits, "weight")
    keep = weight > 0
    weight = torch.where(keep, weight, torch.zeros_like(weight))
    target = torch.where(keep, target, torch.zeros_like(target))
    return target, weight


def _weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Return ``sum(w * v) / max(sum(w), eps)``, ignoring values where ``w == 0``."""
    values = torch.where(weight > 0, values, torch.zeros_like(values))
    return (weight * values).sum() / weight.sum().clamp_min(_EPS)


def _sample_mean(per_sample: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of per-sample losses over samples with some positive weight (0 if none)."""
    has_weight = weight.flatten(1).sum(dim=1) > 0
    per_sample = torch.where(has_weight, per_sample, torch.zeros_like(per_sample))
    return per_sample.sum() / has_weight.sum().clamp_min(1).to(per_sample.dtype)


def weighted_bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    pos_weight: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over weighted pixels.

    Parameters
    ----------
    logits : `torch.Tensor`
        Raw scores, ``(N, C, H, W)``.
    target : `torch.Tensor`
        Targets in [0, 1].
    weight : `torch.Tensor`, optional
        Per-pixel non-negative weights (default all 1).
    pos_weight : `float` or `torch.Tensor`, optional
        Factor on the positive term ``-y log(sigmoid(x))`` of every pixel
        (e.g. from `pos_weight_from_fraction`); a tensor must broadcast to
        the logits.

    Returns
    -------
    loss : `torch.Tensor`
        Scalar ``sum(w * l) / max(sum(w), eps)`` with ``l`` the per-pixel
        loss ``-(p y log s + (1 - y) log(1 - s))``, ``s = sigmoid(x)``.
    """
    target, weight = _prepare(logits, target, weight)
    if pos_weight is not None:
        pos_weight = torch.as_tensor(pos_weight, dtype=logits.dtype, device=logits.device)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pos_weight)
    return _weighted_mean(per_pixel, weight)


def _confusion(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return per-sample soft TP, FN, FP and the aligned weight."""
    target, weight = _prepare(logits, target, weight)
    prob = torch.sigmoid(logits)
    prob = torch.where(weight > 0, prob, torch.zeros_like(prob))
    tp = (weight * prob * target).flatten(1).sum(dim=1)
    fn = (weight * (1 - prob) * target).flatten(1).sum(dim=1)
    fp = (weight * prob * (1 - target)).flatten(1).sum(dim=1)
    return tp, fn, fp, weight


def soft_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    eps: float = 1.0,
) -> torch.Tensor:
    """One minus the soft Dice coefficient of sigmoid probabilities.

    Parameters
    ----------
    logits : `torch.Tensor`
        Raw scores, ``(N, C, H, W)``.
    target : `torch.Tensor`
        Targets in [0, 1].
    weight : `torch.Tensor`, optional
        Per-pixel non-negative weights.
    eps : `float`, optional
        Smoothing added to numerator and denominator; with it a tile
        without positives predicted empty scores a Dice near 1.

    Returns
    -------
    loss : `torch.Tensor`
        Scalar: the mean over samples (those with any positive weight) of
        ``1 - (2 TP + eps) / (2 TP + FN + FP + eps)`` where ``TP = sum(w p y)``,
        ``FN = sum(w (1 - p) y)``, ``FP = sum(w p (1 - y))``.
    """
    tp, fn, fp, weight = _confusion(logits, target, weight)
    dice = (2 * tp + eps) / (2 * tp + fn + fp + eps)
    return _sample_mean(1 - dice, weight)


def focal_tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    alpha: float = 0.7,
    beta: float = 0.3,
    gamma: float = 0.75,
    eps: float = 1.0,
) -> torch.Tensor:
    """Focal Tversky loss (Abraham & Khan 2019) of sigmoid probabilities.

    Parameters
    ----------
    logits : `torch.Tensor`
        Raw scores, ``(N, C, H, W)``.
    target : `torch.Tensor`
        Targets in [0, 1].
    weight : `torch.Tensor`, optional
        Per-pixel non-negative weights.
    alpha : `float`, optional
        Weight of false negatives (missed trail pixels).  ``alpha > beta``
        favours recall, the usual choice for faint thin trails.
    beta : `float`, optional
        Weight of false positives.
    gamma : `float`, optional
        Exponent on ``1 - TI``; below 1 it emphasizes the hard (low-index)
        samples near convergence (``1 / gamma = 4/3`` in the paper's notation).
    eps : `float`, optional
        Smoothing.

    Returns
    -------
    loss : `torch.Tensor`
        Scalar: the mean over samples of ``(1 - TI) ** gamma`` with
        ``TI = (TP + eps) / (TP + alpha FN + beta FP + eps)`` (TP, FN, FP as
        in `soft_dice_loss`).  With ``alpha = beta = 0.5``, ``gamma = 1``
        and ``eps = e / 2`` this equals ``soft_dice_loss`` with ``eps = e``.
    """
    tp, fn, fp, weight = _confusion(logits, target, weight)
    tversky = (tp + eps) / (tp + alpha * fn + beta * fp + eps)
    # Clamped so that the gradient of x**gamma (gamma < 1) stays finite at 0.
    per_sample = (1 - tversky).clamp_min(1e-6) ** gamma
    return _sample_mean(per_sample, weight)


def pos_weight_from_fraction(positive_fraction: float, cap: float = 100.0) -> float:
    """Return the BCE ``pos_weight`` balancing positives and negatives.

    Parameters
    ----------
    positive_fraction : `float`
        Fraction of (weighted) pixels that are positive, in [0, 1].
    cap : `float`, optional
        Largest weight returned (>= 1).

    Returns
    -------
    pos_weight : `float`
        ``(1 - f) / f`` clipped to ``[1 / cap, cap]``; ``cap`` when ``f = 0``.

    Raises
    ------
    ValueError
        If the fraction is outside [0, 1] or the cap below 1.
    """
    fraction = float(positive_fraction)
    if not 0.0 <= fraction <= 1.0 or math.isnan(fraction):
        raise ValueError(f"positive fraction must be in [0, 1], not {positive_fraction}.")
    if not cap >= 1.0:
        raise ValueError(f"cap must be at least 1, not {cap}.")
    if fraction == 0.0:
        return float(cap)
    return float(min(max((1.0 - fraction) / fraction, 1.0 / cap), cap))


def instance_balanced_weights(
    mask: np.ndarray,
    weight: np.ndarray,
    power: float = 0.5,
    reference_pixels: float = 400.0,
    max_factor: float = 4.0,
) -> np.ndarray:
    """Raise the loss weight of small trails so that each trail counts.

    A pixel loss is dominated by long trails, whose masks hold hundreds of
    pixels, while a short trail (a few PSF widths) holds tens; a network
    can then ignore short trails at almost no cost. Each connected
    component of the truth mask gets its pixel weights multiplied by
    ``clip((reference_pixels / n) ** power, 1, max_factor)``, ``n`` being
    its pixel count. Background pixels are unchanged.

    Parameters
    ----------
    mask : `numpy.ndarray`
        Truth masks, ``(N, H, W)`` or ``(H, W)``; positive where > 0.5.
    weight : `numpy.ndarray`
        Pixel weights of the same shape.
    power : `float`, optional
        Exponent; 0 leaves the weights unchanged, 1 gives every trail
        below ``reference_pixels`` the same total weight.
    reference_pixels : `float`, optional
        Components at least this large keep their weights.
    max_factor : `float`, optional
        Largest factor applied.

    Returns
    -------
    weight : `numpy.ndarray`
        New weights (float32), same shape.

    Raises
    ------
    ValueError
        If the shapes differ or a setting is out of range.
    """
    from scipy import ndimage

    mask = np.asarray(mask)
    out = np.array(weight, dtype=np.float32, copy=True)
    if mask.shape != out.shape:
        raise ValueError(f"mask shape {mask.shape} differs from weight shape {out.shape}.")
    if not power >= 0 or not reference_pixels > 0 or not max_factor >= 1:
        raise ValueError(
            f"need power >= 0, reference_pixels > 0 and max_factor >= 1, not {power}, "
            f"{reference_pixels}, {max_factor}."
        )
    if power == 0:
        return out
    squeeze = mask.ndim == 2
    masks = mask[None] if squeeze else mask.reshape((-1,) + mask.shape[-2:])
    weights = out[None] if squeeze else out.reshape((-1,) + out.shape[-2:])
    structure = np.ones((3, 3), dtype=bool)
    for k in range(masks.shape[0]):
        labels, n = ndimage.label(masks[k] > 0.5, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
        factor = np.clip((reference_pixels / np.maximum(sizes, 1.0)) ** power, 1.0, max_factor)
        factor[0] = 1.0
        weights[k] *= factor[labels].astype(np.float32)
    return out


class _ConfigurableLoss(nn.Module):
    """A loss whose constructor arguments round-trip through a JSON-able dict (`config`)."""

    _settings_name = "loss"

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None):
        """Make from a dict of constructor arguments (unknown keys are an error)."""
        config = dict(config or {})
        unknown = set(config) - set(cls().config())
        if unknown:
            raise ValueError(f"unknown {cls._settings_name} settings: {sorted(unknown)}.")
        return cls(**config)

    def config(self) -> dict[str, Any]:
        raise NotImplementedError


class SegmentationLoss(_ConfigurableLoss):
    """Weighted sum of BCE, soft Dice and focal Tversky losses for trail masks.

    Parameters
    ----------
    bce, dice, focal_tversky : `float`, optional
        Weights of the terms; a term with weight 0 is not computed.
    pos_weight : `float`, optional
        BCE weight of positive pixels (see `pos_weight_from_fraction`).
    tversky_alpha, tversky_beta, tversky_gamma : `float`, optional
        Parameters of `focal_tversky_loss`.
    smooth : `float`, optional
        ``eps`` of the Dice and Tversky terms.

    Notes
    -----
    Call as ``loss(logits, target, weight=None)``; returns the scalar total.
    `last_terms` then holds the terms (unweighted) and the total as floats.
    """

    _settings_name = "segmentation loss"

    def __init__(
        self,
        bce: float = 1.0,
        dice: float = 1.0,
        focal_tversky: float = 0.0,
        pos_weight: float | None = None,
        tversky_alpha: float = 0.7,
        tversky_beta: float = 0.3,
        tversky_gamma: float = 0.75,
        smooth: float = 1.0,
    ):
        super().__init__()
        for name, value in (("bce", bce), ("dice", dice), ("focal_tversky", focal_tversky)):
            if not value >= 0:
                raise ValueError(f"loss weight {name} must be non-negative, not {value}.")
        if bce == dice == focal_tversky == 0:
            raise ValueError("at least one loss term must have a positive weight.")
        if pos_weight is not None and not pos_weight > 0:
            raise ValueError(f"pos_weight must be positive, not {pos_weight}.")
        self.bce = float(bce)
        self.dice = float(dice)
        self.focal_tversky = float(focal_tversky)
        self.pos_weight = None if pos_weight is None else float(pos_weight)
        self.tversky_alpha = float(tversky_alpha)
        self.tversky_beta = float(tversky_beta)
        self.tversky_gamma = float(tversky_gamma)
        self.smooth = float(smooth)
        self.last_terms: dict[str, float] = {}

    def config(self) -> dict[str, Any]:
        """Return the constructor arguments as a JSON-able dict."""
        return {
            "bce": self.bce,
            "dice": self.dice,
            "focal_tversky": self.focal_tversky,
            "pos_weight": self.pos_weight,
            "tversky_alpha": self.tversky_alpha,
            "tversky_beta": self.tversky_beta,
            "tversky_gamma": self.tversky_gamma,
            "smooth": self.smooth,
        }

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        terms: dict[str, torch.Tensor] = {}
        total = logits.new_zeros(())
        if self.bce > 0:
            terms["bce"] = weighted_bce(logits, target, weight, pos_weight=self.pos_weight)
            total = total + self.bce * terms["bce"]
        if self.dice > 0:
            terms["dice"] = soft_dice_loss(logits, target, weight, eps=self.smooth)
            total = total + self.dice * terms["dice"]
        if self.focal_tversky > 0:
            terms["focal_tversky"] = focal_tversky_loss(
                logits,
                target,
                weight,
                alpha=self.tversky_alpha,
                beta=self.tversky_beta,
                gamma=self.tversky_gamma,
                eps=self.smooth,
            )
            total = total + self.focal_tversky * terms["focal_tversky"]
        self.last_terms = {name: float(value.detach()) for name, value in terms.items()}
        self.last_terms["total"] = float(total.detach())
        return total

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


def centernet_focal_loss(
    heatmap_logits: torch.Tensor,
    heatmap_target: torch.Tensor,
    weight: torch.Tensor | None = None,
    alpha: float = 2.0,
    beta: float = 4.0,
) -> torch.Tensor:
    """CenterNet's penalty-reduced pixel-wise focal loss (Zhou et al. 2019).

    Parameters
    ----------
    heatmap_logits : `torch.Tensor`
        Raw heatmap scores, ``(N, C, H, W)``.
    heatmap_target : `torch.Tensor`
        Gaussian-splatted target in [0, 1], exactly 1 at the peaks.
    weight : `torch.Tensor`, optional
        Per-pixel non-negative weights.
    alpha, beta : `float`, optional
        Focusing exponent and the exponent of the penalty reduction
        ``(1 - y) ** beta`` near peaks.

    Returns
    -------
    loss : `torch.Tensor`
        Scalar ``-sum(w L) / max(n_peaks, 1)`` with ``L = (1 - p)^alpha log p``
        at peaks (``y == 1``) and ``(1 - y)^beta p^alpha log(1 - p)``
        elsewhere, ``p = sigmoid(x)`` (log-probabilities from ``logsigmoid``
        for stability); ``n_peaks`` counts peaks with positive weight.
    """
    target, weight = _prepare(heatmap_logits, heatmap_target, weight)
    prob = torch.sigmoid(heatmap_logits)
    log_p = F.logsigmoid(heatmap_logits)
    log_not_p = F.logsigmoid(-heatmap_logits)
    peak = (target >= 1.0) & (weight > 0)
    pos = (1 - prob).pow(alpha) * log_p
    neg = (1 - target).clamp_min(0).pow(beta) * prob.pow(alpha) * log_not_p
    per_pixel = torch.where(peak, pos, neg)
    per_pixel = torch.where(weight > 0, per_pixel, torch.zeros_like(per_pixel))
    n_peaks = peak.sum().clamp_min(1).to(per_pixel.dtype)
    return -(weight * per_pixel).sum() / n_peaks


def offset_l1_loss(
    offset_pred: torch.Tensor, offset_target: torch.Tensor, offset_mask: torch.Tensor
) -> torch.Tensor:
    """L1 loss of sub-pixel offsets at peak pixels only.

    Parameters
    ----------
    offset_pred : `torch.Tensor`
        Predicted offsets, ``(N, 2, H, W)``.
    offset_target : `torch.Tensor`
        True offsets, same shape (values elsewhere than peaks are ignored,
        NaN included).
    offset_mask : `torch.Tensor`
        1 at peak pixels (or non-negative weights), ``(N, H, W)`` or
        ``(N, 1, H, W)``.

    Returns
    -------
    loss : `torch.Tensor`
        Scalar ``sum(m |pred - target|) / max(C sum(m), eps)``: the mean
        absolute error per offset component over masked pixels; 0 without
        masked pixels.
    """
    target, weight = _prepare(offset_pred, offset_target, offset_mask)
    error = (offset_pred - target).abs()
    return _weighted_mean(error, weight)


class StarDetectionLoss(_ConfigurableLoss):
    """CenterNet-style loss of a star detector: heatmap focal loss plus offset L1.

    Parameters
    ----------
    heatmap, offset : `float`, optional
        Weights of the two terms.
    alpha, beta : `float`, optional
        Parameters of `centernet_focal_loss`.

    Notes
    -----
    Call as ``loss(output, targets, weight=None)`` with ``output`` a dict
    with ``heatmap`` (logits) and ``offset``, and ``targets`` a dict with
    ``heatmap``, ``offset`` and ``offset_mask``; ``weight`` (per pixel)
    applies to the heatmap term and multiplies the offset mask.  Returns the
    scalar total; `last_terms` holds the terms and total as floats.
    """

    _settings_name = "star detection loss"

    def __init__(
        self,
        heatmap: float = 1.0,
        offset: float = 1.0,
        alpha: float = 2.0,
        beta: float = 4.0,
        candidate: float = 1.0,
        candidate_radius: float = 1.5,
    ):
        super().__init__()
        if not (heatmap >= 0 and offset >= 0 and candidate >= 0) or heatmap == offset == 0:
            raise ValueError(f"loss weights must be non-negative, not both 0: {heatmap}, {offset}.")
        self.heatmap = float(heatmap)
        self.offset = float(offset)
        self.candidate = float(candidate)
        self.candidate_radius = float(candidate_radius)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.last_terms: dict[str, float] = {}

    def config(self) -> dict[str, Any]:
        """Return the constructor arguments as a JSON-able dict."""
        return {
            "heatmap": self.heatmap,
            "offset": self.offset,
            "alpha": self.alpha,
            "beta": self.beta,
            "candidate": self.candidate,
            "candidate_radius": self.candidate_radius,
        }

    def forward(
        self,
        output: Mapping[str, torch.Tensor],
        targets: Mapping[str, torch.Tensor],
        weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        heatmap = output["heatmap"]
        terms: dict[str, torch.Tensor] = {}
        total = heatmap.new_zeros(())
        if self.heatmap > 0:
            terms["heatmap"] = centernet_focal_loss(
                heatmap, targets["heatmap"], weight, alpha=self.alpha, beta=self.beta
            )
            total = total + self.heatmap * terms["heatmap"]
        if self.offset > 0:
            offset = output["offset"]
            mask = _align(targets["offset_mask"], offset[:, :1], "offset_mask")
            if weight is not None:
                mask = mask * _align(weight, offset[:, :1], "weight")
            terms["offset"] = offset_l1_loss(offset, targets["offset"], mask)
            total = total + self.offset * terms["offset"]
        if self.candidate > 0 and "candidate_logits" in output:
            # The hybrid detector's re-scored candidates: each is real if a true star (the peaks of the
            # target heatmap plus their offsets) lies within candidate_radius; the refined offset is fitted
            # on the real ones.
            from ..models.networks import loss_targets_for_candidates

            truth = _target_positions(targets["heatmap"], targets["offset"])
            labels, offset_targets = loss_targets_for_candidates(
                output["candidates"], truth, radius=self.candidate_radius
            )
            logits = output["candidate_logits"].float()
            terms["candidate"] = F.binary_cross_entropy_with_logits(logits, labels.to(logits))
            refined = output["candidate_offset"].float()
            if labels.sum() > 0:
                error = refined - offset_targets.to(refined)
                terms["candidate_offset"] = (error.abs().sum(-1) * labels).sum() / labels.sum()
            else:
                terms["candidate_offset"] = refined.sum() * 0.0
            total = total + self.candidate * (terms["candidate"] + terms["candidate_offset"])
        self.last_terms = {name: float(value.detach()) for name, value in terms.items()}
        self.last_terms["total"] = float(total.detach())
        return total

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())


def _target_positions(heatmap: torch.Tensor, offset: torch.Tensor) -> list[np.ndarray]:
    """True star positions ``(M, 2)`` per image: target heatmap peaks (value 1) plus their offsets."""
    heat = heatmap.detach().reshape(heatmap.shape[0], -1, *heatmap.shape[-2:])[:, 0]
    off = offset.detach().float()
    out = []
    for i in range(heat.shape[0]):
        ys, xs = torch.nonzero(heat[i] >= 0.999, as_tuple=True)
        dx = off[i, 0, ys, xs]
        dy = off[i, 1, ys, xs]
        out.append(torch.stack([xs.float() + dx, ys.float() + dy], dim=-1).cpu().numpy())
    return out
