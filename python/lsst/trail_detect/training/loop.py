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

"""The training loop shared by the training tasks and ``trail-detect train``.

One function, `train`, trains a trail segmenter or a star detector on HDF5
tile shards:

- balanced sampling of tiles with trails (and oversampling of those the
  stack-like detection missed), augmentation, a curriculum from bright to
  faint trails;
- an encoder pretrained on star fields, unfrozen progressively from the
  deepest stage;
- ``torchrun`` distributed data parallel (gloo on CPU, NCCL on GPU), mixed
  precision on GPU;
- per-epoch metrics, checkpoints (safetensors, never pickle) and resume,
  early stopping and the operating threshold chosen on the validation
  split;
- seeded, so a run is reproducible.
"""

from __future__ import annotations

__all__ = ("TrainingConfig", "TrainingResult", "train")

import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_LOG = logging.getLogger(__name__)


#: Loss settings of each kind when a configuration gives none.
DEFAULT_LOSS = {
    "trail": {"bce": 1.0, "dice": 1.0, "focal_tversky": 0.0, "pos_weight": 3.0},
    "star": {},
}


#: Validation scores of the trail kind that can pick the best epoch and the operating threshold: the keys of
#: the score and of the threshold it chooses in the validation metrics.
SELECTION_METRICS = {
    "pixel_f1": ("f1", "threshold"),
    "object_f1": ("object_f1", "object_threshold"),
    "object_recall_at_fp": ("object_recall_at_fp", "budget_threshold"),
}

#: False components per 4k x 4k-equivalent area of validation tiles allowed by ``object_recall_at_fp``.
DEFAULT_SELECTION_FP_BUDGET = 150.0


@dataclasses.dataclass
class TrainingConfig:
    """Settings of one training run (JSON-serializable)."""

    kind: str = "trail"
    """``trail`` (segmentation) or ``star`` (heatmap and offsets)."""
    architecture: dict | None = None
    """Network architecture (`~lsst.trail_detect.models.networks.build_model`); default for the kind."""
    epochs: int = 20
    batch_size: int = 8
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    loss: dict | None = None
    """Loss settings (`~lsst.trail_detect.training.losses`); None gives the default of ``kind``
    (`DEFAULT_LOSS`)."""
    instance_balance: dict | None = None
    """Trail kind: raise the loss weight of small truth components (short trails) with
    `~lsst.trail_detect.training.losses.instance_balanced_weights`; its keyword arguments
    (``power``, ``reference_pixels``, ``max_factor``), or None for plain pixel weights."""
    oversample_small_trails: dict | None = None
    """Trail kind: draw tiles holding a whole short trail (a truth component spanning at most
    ``max_extent`` pixels, away from the tile edge; see `small_trail_tiles`) ``factor`` times more often
    among the tiles with trails, e.g. ``{"max_extent": 16, "factor": 4}``; None draws them as the others."""
    positive_fraction: float = 0.6
    """Fraction of drawn trail tiles that contain a trail."""
    samples_per_epoch: int | None = None
    """Tiles drawn per epoch (default: the size of the training split)."""
    augment: dict = dataclasses.field(
        default_factory=lambda: {"flips": True, "rot90": True, "snr_scale": [0.6, 1.0], "p_snr_scale": 0.3}
    )
    curriculum_epochs: int = 0
    """Epochs over which the faintest trail allowed falls from ``curriculum_start_nu`` to none."""
    curriculum_start_nu: float = 8.0
    pretrained_encoder: str | None = None
    """Path of a star-detector model whose encoder initializes the network."""
    init_model: str | None = None
    """Path of a trained model of the same kind whose weights initialize the whole network (fine-tuning);
    its architecture is used unless ``architecture`` is given, and must then match."""
    line_filters: list | None = None
    """Trail kind: fixed segment matched filters ``[[length, n_angles], ...]`` added to the network's input
    (``line_filters`` of `~lsst.trail_detect.models.networks.ResAttentionUNet`), e.g. ``[[9, 8], [25, 16]]``.
    With an ``init_model`` that has none, its weights are kept and the new input channels start at zero,
    so training starts from exactly what that model computes."""
    unfreeze_epochs: list = dataclasses.field(default_factory=list)
    """With a pretrained encoder: epochs at which the next-deepest frozen stage is unfrozen (the encoder
    starts frozen; an empty list trains it from the start)."""
    patience: int = 5
    """Stop after this many epochs without a better validation score."""
    selection_metric: str = "pixel_f1"
    """Trail kind: validation score that picks the best epoch and the operating threshold: ``pixel_f1``;
    ``object_f1`` (every truth component counts once, so short trails weigh as much as long ones); or
    ``object_recall_at_fp`` (the fraction of truth components found at the lowest threshold whose false
    components stay within ``selection_fp_budget``, the form of the detection goal)."""
    selection_fp_budget: float = DEFAULT_SELECTION_FP_BUDGET
    """Trail kind, ``object_recall_at_fp``: false components allowed per 4k x 4k-equivalent area of
    validation tiles. These are raw components of the probability map, before the detection's shape
    rejection and score cut, so the budget is well above the detection's own."""
    num_workers: int = 0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    """Mixed precision (bfloat16) on GPU."""
    threads: int | None = None
    """torch CPU threads (default: leave torch's choice)."""
    checkpoint_dir: str | None = None
    resume: bool = False
    max_steps_per_epoch: int | None = None
    progress: bool = True

    def to_dict(self) -> dict:
        """Return a JSON-serializable dict."""
        return dataclasses.asdict(self)

    def __post_init__(self):
        if self.loss is None:
            self.loss = dict(DEFAULT_LOSS.get(self.kind, {}))
        if self.line_filters is not None and self.kind != "trail":
            raise ValueError(f"line_filters are for the trail kind only, not {self.kind!r}.")
        if self.selection_metric not in SELECTION_METRICS:
            raise ValueError(
                f"selection_metric must be one of {', '.join(SELECTION_METRICS)}, "
                f"not {self.selection_metric!r}."
            )
        if not self.selection_fp_budget > 0:
            raise ValueError(f"selection_fp_budget must be positive, not {self.selection_fp_budget}.")

    @classmethod
    def from_dict(cls, data: dict) -> TrainingConfig:
        """Build from a dict, refusing unknown keys."""
        from ..settings import check_known_fields

        check_known_fields(cls, data, "training")
        return cls(**data)


@dataclasses.dataclass
class TrainingResult:
    """What `train` returns."""

    model: Any
    """The `~lsst.trail_detect.models.storage.TrailDetectorModel` of the best epoch."""
    history: list
    """Per-epoch metrics."""


def _seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _distributed():
    """Return (rank, world_size, is_distributed), initializing the process group under torchrun."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), True


def _device(name: str, rank: int):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", rank % torch.cuda.device_count())
        return torch.device("cpu")
    return torch.device(name)


def _trail_metrics(
    probs: np.ndarray, target: np.ndarray, weight: np.ndarray, fp_budget: float = DEFAULT_SELECTION_FP_BUDGET
) -> dict:
    """Pixel-level precision, recall and F1 over thresholds; the best threshold by F1.

    The object-level metrics of `_object_metrics` (with ``fp_budget``) are
    added.
    """
    thresholds = np.linspace(0.05, 0.95, 19)
    valid = weight > 0
    p, t = probs[valid], target[valid] > 0.5
    best = {"f1": -1.0}
    rows = []
    for th in thresholds:
        pred = p >= th
        tp = float(np.sum(pred & t))
        fp = float(np.sum(pred & ~t))
        fn = float(np.sum(~pred & t))
        precision = tp / max(tp + fp, 1.0)
        recall = tp / max(tp + fn, 1.0)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        rows.append((float(th), precision, recall, f1))
        if f1 > best["f1"]:
            best = {"threshold": float(th), "precision": precision, "recall": recall, "f1": f1}
    best["curve"] = rows
    best.update(_object_metrics(probs, target, weight, thresholds, fp_budget=fp_budget))
    return best


def _object_metrics(
    probs: np.ndarray,
    target: np.ndarray,
    weight: np.ndarray,
    thresholds: np.ndarray,
    min_pixels: int = 6,
    fp_budget: float = DEFAULT_SELECTION_FP_BUDGET,
) -> dict:
    """Object-level precision, recall and F1 of tile segmentations over thresholds.

    Every connected truth component (8-connected, at least ``min_pixels``
    usable pixels) counts once, whatever its size: it is found when the
    probability reaches the threshold somewhere on it. A predicted
    component (at least ``min_pixels``) is a false positive when it touches
    no truth pixel. Short trails thus weigh as much as long ones, unlike in
    the pixel metrics.

    The false components are also counted per 4k x 4k-equivalent area of
    usable pixels. ``budget_threshold`` is the lowest threshold whose rate
    is at most ``fp_budget``, and ``object_recall_at_fp`` the recall there:
    the detection goal's form (completeness at a false-positive rate). When
    no threshold meets the budget, the highest is taken and its recall is
    scaled down by the budget over its rate, so that an epoch within the
    budget always scores above one that is not at the same recall.
    """
    from scipy import ndimage

    from ..evaluation.metrics import DETECTOR_4K_PIXELS

    structure = np.ones((3, 3), dtype=bool)
    probs = probs.reshape((-1,) + probs.shape[-2:])
    target = target.reshape(probs.shape) > 0.5
    valid = weight.reshape(probs.shape) > 0
    found = np.zeros(len(thresholds))
    n_truth = 0
    n_pred = np.zeros(len(thresholds))
    n_false = np.zeros(len(thresholds))
    for prob, truth, good in zip(probs, target, valid):
        prob = np.where(good, prob, 0.0)
        labels, n = ndimage.label(truth & good, structure=structure)
        if n:
            sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
            peaks = ndimage.maximum(prob, labels, np.arange(1, n + 1))[sizes >= min_pixels]
            n_truth += len(peaks)
            found += np.sum(peaks[None, :] >= thresholds[:, None], axis=1)
        for k, th in enumerate(thresholds):
            pred, m = ndimage.label(prob >= th, structure=structure)
            if m == 0:
                continue
            sizes = np.bincount(pred.ravel(), minlength=m + 1)[1:]
            hits = np.bincount(pred.ravel(), weights=truth.ravel(), minlength=m + 1)[1:] > 0
            keep = sizes >= min_pixels
            n_pred[k] += np.sum(keep)
            n_false[k] += np.sum(keep & ~hits)
    recall = found / max(n_truth, 1)
    precision = (n_pred - n_false) / np.maximum(n_pred, 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    fp_rate = n_false / max(valid.sum() / DETECTOR_4K_PIXELS, 1e-12)
    k = int(np.argmax(f1))
    within = np.flatnonzero(fp_rate <= fp_budget)
    b = int(within[0]) if within.size else len(thresholds) - 1
    at_budget = recall[b] * min(1.0, fp_budget / max(fp_rate[b], 1e-12))
    return {
        "object_threshold": float(thresholds[k]),
        "object_precision": float(precision[k]),
        "object_recall": float(recall[k]),
        "object_f1": float(f1[k]),
        "budget_threshold": float(thresholds[b]),
        "object_recall_at_fp": float(at_budget),
        "fp_per_4k_at_budget_threshold": float(fp_rate[b]),
        "fp_budget": float(fp_budget),
        "object_curve": [
            (float(th), float(p), float(r), float(f), float(rate))
            for th, p, r, f, rate in zip(thresholds, precision, recall, f1, fp_rate, strict=True)
        ],
    }


def _star_metrics(
    outputs: list[dict], targets: list[dict], threshold: float = 0.3, radius: float = 1.5
) -> dict:
    """Object-level precision and recall of decoded star peaks against the target peaks."""
    from ..tiles.star_targets import decode_star_targets

    tp = fp = fn = 0
    for out, tgt in zip(outputs, targets):
        heat = 1.0 / (1.0 + np.exp(-out["heatmap"][0]))
        x, y, _ = decode_star_targets(heat, out["offset"], threshold=threshold)
        tx, ty, _ = decode_star_targets(tgt["heatmap"], tgt["offset"], threshold=0.99, window=1)
        if len(tx) == 0:
            fp += len(x)
            continue
        if len(x) == 0:
            fn += len(tx)
            continue
        d = np.hypot(x[:, None] - tx[None, :], y[:, None] - ty[None, :])
        matched_truth = set()
        for i in np.argsort(d.min(axis=1)):
            j = int(np.argmin(d[i]))
            if d[i, j] <= radius and j not in matched_truth:
                matched_truth.add(j)
                tp += 1
            else:
                fp += 1
        fn += len(tx) - len(matched_truth)
    precision = tp / max(tp + fp, 1)
    recall = tp / max(tp + fn, 1)
    return {
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
        "threshold": threshold,
    }


def _evaluate(
    model, loader, loss_fn, device, kind: str, fp_budget: float = DEFAULT_SELECTION_FP_BUDGET
) -> dict:
    """Validation loss and metrics."""
    import torch

    model.eval()
    total, count = 0.0, 0
    probs, targets, weights = [], [], []
    star_out, star_tgt = [], []
    with torch.no_grad():
        for batch in loader:
            image = batch["image"].to(device)
            out = model(image)
            if kind == "trail":
                logits = out if torch.is_tensor(out) else out["logits"]
                loss = loss_fn(logits[:, 0], batch["mask"].to(device), batch["weight"].to(device))
                probs.append(torch.sigmoid(logits[:, 0]).float().cpu().numpy())
                targets.append(batch["mask"].numpy())
                weights.append(batch["weight"].numpy())
            else:
                tgt = {k: batch[k].to(device) for k in ("heatmap", "offset", "offset_mask")}
                loss = loss_fn(out, tgt, batch["weight"].to(device))
                for k in range(image.shape[0]):
                    star_out.append(
                        {
                            "heatmap": out["heatmap"][k].float().cpu().numpy(),
                            "offset": out["offset"][k].float().cpu().numpy(),
                        }
                    )
                    star_tgt.append(
                        {"heatmap": batch["heatmap"][k].numpy(), "offset": batch["offset"][k].numpy()}
                    )
            total += float(loss) * image.shape[0]
            count += image.shape[0]
    metrics = {"val_loss": total / max(count, 1)}
    if kind == "trail" and probs:
        metrics.update(
            _trail_metrics(
                np.concatenate(probs), np.concatenate(targets), np.concatenate(weights), fp_budget=fp_budget
            )
        )
    elif star_out:
        metrics.update(_star_metrics(star_out, star_tgt))
    return metrics


def _make_loss(config: TrainingConfig):
    from .losses import SegmentationLoss, StarDetectionLoss

    if config.kind == "trail":
        return SegmentationLoss.from_config(config.loss)
    return StarDetectionLoss.from_config(config.loss)


def _curriculum_weights(dataset, config: TrainingConfig, epoch: int) -> np.ndarray | None:
    """Zero the sampling weight of trails fainter than the curriculum's current floor."""
    if config.curriculum_epochs <= 0 or epoch >= config.curriculum_epochs:
        return None
    meta = dataset.tile_meta
    if "max_nu_det" not in meta.colnames:
        return None
    floor = config.curriculum_start_nu * (1.0 - epoch / config.curriculum_epochs)
    nu = np.asarray(meta["max_nu_det"], dtype=float)
    has = np.asarray(dataset.has_trail, dtype=bool)
    keep = ~has | (np.nan_to_num(nu, nan=0.0) >= floor)
    return keep.astype(float)


def small_trail_tiles(dataset, max_extent: float) -> np.ndarray:
    """Flag the tiles holding a whole short trail.

    Parameters
    ----------
    dataset : `~lsst.trail_detect.tiles.datasets.TileDataset`
        Trail tiles (read without augmentation).
    max_extent : `float`
        Largest extent (pixels, the longer side of the bounding box) of a
        truth component counted as short.

    Returns
    -------
    flags : `numpy.ndarray`
        One boolean per tile: some 8-connected component of the truth mask
        spans at most ``max_extent`` pixels and does not touch the tile edge
        (a long trail cut by the edge is not short).
    """
    from scipy import ndimage

    structure = np.ones((3, 3), dtype=bool)
    flags = np.zeros(len(dataset), dtype=bool)
    has = np.asarray(dataset.has_trail, dtype=bool)
    for index in np.flatnonzero(has):
        mask = np.asarray(dataset.read_arrays(int(index))["mask"])
        mask = mask.reshape(mask.shape[-2:]) > 0.5
        labels, n = ndimage.label(mask, structure=structure)
        for box in ndimage.find_objects(labels):
            rows, cols = box
            inside = (
                rows.start > 0 and cols.start > 0 and rows.stop < mask.shape[0] and cols.stop < mask.shape[1]
            )
            if inside and max(rows.stop - rows.start, cols.stop - cols.start) <= max_extent:
                flags[index] = True
                break
    return flags


def _sampler(dataset, config: TrainingConfig, epoch: int, rank: int, world: int, small=None):
    """Per-epoch sampler: class-balanced (trails), curriculum-filtered, different per rank."""
    import torch

    from ..tiles.datasets import balanced_sampler

    n = config.samples_per_epoch or len(dataset)
    n = max(n // world, 1)
    seed = config.seed * 1000003 + epoch * 101 + rank
    if config.kind != "trail":
        generator = torch.Generator()
        generator.manual_seed(seed)
        return torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=n, generator=generator)
    has = np.asarray(dataset.has_trail, dtype=bool)
    # A set with only one class is sampled as it is.
    fraction = config.positive_fraction if 0 < has.sum() < len(has) else float(has.mean())
    extra = _curriculum_weights(dataset, config, epoch)
    if small is not None and np.any(small):
        boost = np.where(small, float(config.oversample_small_trails.get("factor", 4.0)), 1.0)
        extra = boost if extra is None else extra * boost
    if extra is not None and not np.any(extra[has] > 0):
        extra = None  # a filter that would leave no trail is not applied
    return balanced_sampler(dataset, positive_fraction=fraction, num_samples=n, seed=seed, tile_weights=extra)


def _freeze_schedule(model, config: TrainingConfig, epoch: int) -> int:
    """Freeze the encoder stages not yet unfrozen; return how many stages are trainable."""
    if not config.pretrained_encoder or not config.unfreeze_epochs or not hasattr(model, "encoder_stages"):
        return -1
    stages = list(model.encoder_stages())
    n_open = sum(1 for e in config.unfreeze_epochs if epoch >= e)
    n_open = min(n_open, len(stages))
    for k, stage in enumerate(stages):
        trainable = k >= len(stages) - n_open  # deepest stages first
        for p in stage.parameters():
            p.requires_grad_(trainable)
    return n_open


def _save_checkpoint(path: Path, model, optimizer, epoch: int, best: dict, history: list) -> None:
    """Write model and optimizer tensors to safetensors and the rest to JSON (no pickle)."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars = {}
    for pid, state in opt["state"].items():
        for key, value in state.items():
            if hasattr(value, "detach"):
                tensors[f"optim.{pid}.{key}"] = (
                    value.detach().cpu().contiguous().reshape(-1)
                    if value.ndim == 0
                    else value.detach().cpu().contiguous()
                )
                scalars[f"{pid}.{key}.scalar"] = value.ndim == 0
            else:
                scalars[f"{pid}.{key}.value"] = value
    meta = {
        "epoch": epoch,
        "best": best,
        "history": history,
        "param_groups": opt["param_groups"],
        "scalars": scalars,
    }
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"checkpoint": json.dumps(meta, default=float)})
    os.replace(tmp, path)


def _load_checkpoint(path: Path, model, optimizer) -> tuple[int, dict, list]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["checkpoint"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            if meta["scalars"].get(f"{pid}.{name}.scalar"):
                value = value.reshape(())
            state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        if key.endswith(".value"):
            pid, name, _ = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["epoch"]), meta["best"], meta["history"]


def train(
    shard_paths: Sequence[str | os.PathLike],
    config: TrainingConfig,
    *,
    out: str | os.PathLike | None = None,
    provenance: dict | None = None,
    log: Callable[[str], None] | None = None,
):
    """Train a network on tile shards.

    Parameters
    ----------
    shard_paths : sequence of path-like
        HDF5 tile shards (trail or star, matching ``config.kind``) holding
        ``train`` and ``validation`` splits.
    config : `TrainingConfig`
        Settings.
    out : path-like, optional
        Where to save the best model (safetensors), on rank 0.
    provenance : `dict`, optional
        Recorded in the model's metadata (collections, data IDs...).
    log : callable, optional
        Receives one line per epoch (default: the module logger).

    Returns
    -------
    result : `TrainingResult`
        The best model (by validation F1, then loss) and the history.
    """
    import torch

    from .. import __version__
    from ..models.networks import (
        architecture_of,
        build_model,
        default_architecture,
        input_conv_key,
        load_widened_state,
        transfer_encoder,
    )
    from ..models.storage import TrailDetectorModel
    from ..tiles.datasets import Augment, TileDataset
    from .losses import instance_balanced_weights

    say = log or _LOG.info
    if config.kind not in ("trail", "star"):
        raise ValueError(f"kind must be 'trail' or 'star', not {config.kind!r}.")
    rank, world, distributed = _distributed()
    _seed_everything(config.seed + rank)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = _device(config.device, rank)
    paths = [str(p) for p in shard_paths]
    augment = Augment(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in config.augment.items()})
    train_set = TileDataset(paths, split="train", augment=augment, seed=config.seed)
    val_set = TileDataset(paths, split="validation", check_splits=False)
    if train_set.kind != config.kind:
        raise ValueError(f"the shards hold {train_set.kind} tiles but kind is {config.kind!r}.")
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError(
            f"need tiles in both the train ({len(train_set)}) and validation ({len(val_set)}) splits."
        )
    init = None
    if config.init_model:
        init = TrailDetectorModel.load(config.init_model)
        if init.kind != config.kind:
            raise ValueError(f"init_model {config.init_model} is a {init.kind} model, not {config.kind}.")
        if config.architecture and dict(config.architecture) != dict(init.architecture):
            raise ValueError(
                f"init_model {config.init_model} has architecture {init.architecture}, "
                f"not the requested {config.architecture}."
            )
    architecture = config.architecture or (
        dict(init.architecture) if init is not None else default_architecture(config.kind, "compact")
    )
    if config.line_filters is not None:
        architecture = {**architecture, "line_filters": config.line_filters}
    model = build_model(architecture)
    architecture = architecture_of(model)
    if init is not None:
        own, requested = init.architecture.get("line_filters"), architecture.get("line_filters")
        if own and own != requested:
            raise ValueError(
                f"init_model {config.init_model} has line filters {own}, not the requested {requested}."
            )
        # Line filters added to a model without them: its input layer gains their channels at zero.
        widen = "encoder." + input_conv_key(model.encoder) if requested and not own else None
        load_widened_state(model, init.torch_tensors(), widen=widen, what=f"init_model {config.init_model}")
        say(f"weights initialized from {config.init_model}")
    if config.pretrained_encoder:
        source = TrailDetectorModel.load(config.pretrained_encoder).build()
        transfer_encoder(source, model)
        say(f"encoder initialized from {config.pretrained_encoder}")
    model.to(device)
    if distributed:
        model_ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    else:
        model_ddp = model
    loss_fn = _make_loss(config).to(device)
    optimizer = torch.optim.AdamW(
        list(model.parameters()), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
    use_amp = config.amp and device.type == "cuda"
    checkpoint = Path(config.checkpoint_dir) / "checkpoint.safetensors" if config.checkpoint_dir else None
    start_epoch, best, history = 0, {"score": -math.inf}, []
    best_tensors = None
    if checkpoint is not None and config.resume and checkpoint.exists():
        start_epoch, best, history = _load_checkpoint(checkpoint, model, optimizer)
        start_epoch += 1
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # stepping the schedule to where it stopped
            for _ in range(start_epoch):
                scheduler.step()
        say(f"resumed from {checkpoint} after epoch {start_epoch - 1}")
        best_file = checkpoint.with_name("best.safetensors")
        if best_file.exists():
            best_tensors = TrailDetectorModel.load(best_file).tensors
    val_loader = torch.utils.data.DataLoader(
        val_set, batch_size=config.batch_size, shuffle=False, num_workers=config.num_workers
    )
    small = None
    if config.kind == "trail" and config.oversample_small_trails:
        small = small_trail_tiles(train_set, float(config.oversample_small_trails.get("max_extent", 16)))
        say(f"{int(small.sum())} of {len(train_set)} training tiles hold a whole short trail (oversampled)")
    stale = 0
    for epoch in range(start_epoch, config.epochs):
        t0 = time.time()
        open_stages = _freeze_schedule(model, config, epoch)
        sampler = _sampler(train_set, config, epoch, rank, world, small=small)
        train_set.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(
            train_set,
            batch_size=config.batch_size,
            sampler=sampler,
            num_workers=config.num_workers,
            drop_last=False,
        )
        model_ddp.train()
        total, steps = 0.0, 0
        iterator = loader
        if config.progress and rank == 0:
            try:
                from tqdm import tqdm

                iterator = tqdm(
                    loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, mininterval=2.0
                )
            except ImportError:
                pass
        for batch in iterator:
            image = batch["image"].to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                pred = model_ddp(image)
                if config.kind == "trail":
                    logits = pred if torch.is_tensor(pred) else pred["logits"]
                    weight = batch["weight"]
                    if config.instance_balance:
                        weight = torch.from_numpy(
                            instance_balanced_weights(
                                batch["mask"].numpy(), weight.numpy(), **config.instance_balance
                            )
                        )
                    loss = loss_fn(logits[:, 0].float(), batch["mask"].to(device), weight.to(device))
                else:
                    tgt = {k: batch[k].to(device) for k in ("heatmap", "offset", "offset_mask")}
                    loss = loss_fn(
                        {k: v.float() for k, v in pred.items() if k in ("heatmap", "offset")},
                        tgt,
                        batch["weight"].to(device),
                    )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            total += float(loss.detach())
            steps += 1
            if config.max_steps_per_epoch and steps >= config.max_steps_per_epoch:
                break
        scheduler.step()
        metrics = (
            _evaluate(model, val_loader, loss_fn, device, config.kind, fp_budget=config.selection_fp_budget)
            if rank == 0
            else {}
        )
        record = {
            "epoch": epoch,
            "train_loss": total / max(steps, 1),
            "steps": steps,
            "seconds": time.time() - t0,
            "lr": optimizer.param_groups[0]["lr"],
            "open_encoder_stages": open_stages,
            **{k: v for k, v in metrics.items() if k not in ("curve", "object_curve")},
        }
        history.append(record)
        if rank == 0:
            score_key, _ = SELECTION_METRICS[config.selection_metric]
            score = metrics[score_key] if config.kind == "trail" else metrics.get("f1", -metrics["val_loss"])
            improved = score > best.get("score", -math.inf)
            if improved:
                best = {"score": float(score), "epoch": epoch, **metrics}
                best_tensors = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                stale = 0
            else:
                stale += 1
            say(
                f"epoch {epoch + 1}/{config.epochs}: train loss {record['train_loss']:.4f}, val loss "
                f"{metrics['val_loss']:.4f}, val F1 {metrics.get('f1', float('nan')):.3f} "
                f"(P {metrics.get('precision', float('nan')):.3f}, "
                f"R {metrics.get('recall', float('nan')):.3f}, "
                f"threshold {metrics.get('threshold', float('nan')):.2f}"
                + (
                    f"; objects F1 {metrics['object_f1']:.3f} (P {metrics['object_precision']:.3f}, "
                    f"R {metrics['object_recall']:.3f}, threshold {metrics['object_threshold']:.2f})"
                    if "object_f1" in metrics
                    else ""
                )
                + (
                    f"; at {metrics['fp_per_4k_at_budget_threshold']:.0f} false per 4k "
                    f"recall {metrics['object_recall_at_fp']:.3f} "
                    f"(threshold {metrics['budget_threshold']:.2f})"
                    if config.selection_metric == "object_recall_at_fp"
                    else ""
                )
                + f"){' *' if improved else ''} "
                f"[{record['seconds']:.0f} s]"
            )
            if checkpoint is not None:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                _save_checkpoint(checkpoint, model, optimizer, epoch, best, history)
                if improved:
                    TrailDetectorModel.from_module(
                        model, kind=config.kind, architecture=architecture, metadata={}
                    ).save(checkpoint.with_name("best.safetensors"))
        if distributed:
            import torch.distributed as dist

            flag = torch.tensor([stale], device=device)
            dist.broadcast(flag, 0)
            stale = int(flag.item())
        if stale >= config.patience:
            say(f"early stop: no better validation score for {config.patience} epochs")
            break
    if best_tensors is not None:
        model.load_state_dict(best_tensors)
    normalization = train_set.normalization or {}
    if normalization and "method" not in normalization:  # per-detector entries: keep the shared part
        normalization = next(iter(normalization.values()))
    metadata = {
        "normalization": {k: v for k, v in normalization.items() if k in ("method", "clip_min", "clip_max")},
        "threshold": float(best.get(SELECTION_METRICS[config.selection_metric][1], 0.5)),
        "validation": {k: v for k, v in best.items() if k not in ("curve", "object_curve")},
        "validation_curve": best.get("curve", []),
        "training": config.to_dict(),
        "history": history,
        "provenance": {
            "shards": [os.path.basename(p) for p in paths],
            "package_version": __version__,
            "world_size": world,
            "device": str(device),
            **(provenance or {}),
        },
        "tile_size": train_set.tile_size,
    }
    result = TrailDetectorModel.from_module(
        model, kind=config.kind, architecture=architecture, metadata=metadata
    )
    if out is not None and rank == 0:
        result.save(out)
        say(f"saved {result.summary()} to {out}")
    if distributed:
        import torch.distributed as dist

        dist.barrier()
    return TrainingResult(model=result, history=history)
