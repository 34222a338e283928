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

"""evaluateStarDetector: the star detector against the classical 5 sigma
detection on held-out star fields, in all and in crowded fields.
"""

from __future__ import annotations

__all__ = (
    "EvaluateStarDetectorConfig",
    "EvaluateStarDetectorConnections",
    "EvaluateStarDetectorTask",
    "star_goals",
)

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from .stars import DEFAULT_SNR_EDGES

_FIELD_DIMS = ("instrument", "visit", "detector")
_DETECTORS = ("cnn", "classical")


class EvaluateStarDetectorConnections(pipeBase.PipelineTaskConnections, dimensions=("instrument",)):
    """Connections of `EvaluateStarDetectorTask`."""

    images = cT.Input(
        doc="Simulated star fields (only those of the evaluated split are read).",
        name="star_field_image",
        storageClass="VisitImage",
        dimensions=_FIELD_DIMS,
        multiple=True,
        deferLoad=True,
    )
    truths = cT.Input(
        doc="Truth of the star fields (positions, nu_psf, saturation), read only after detection.",
        name="star_field_truth",
        storageClass="ArrowAstropy",
        dimensions=_FIELD_DIMS,
        multiple=True,
        deferLoad=True,
    )
    model = cT.Input(
        doc="Trained star detector (heatmap and offset heads, normalization, operating threshold).",
        name="star_detector_model",
        storageClass="TrailDetectorModel",
        dimensions=(),
    )
    metrics = cT.Output(
        doc="Completeness against SNR, purity, 50% and 90% points of the CNN and the classical 5 sigma "
        "detection, in all and in crowded fields, per field, and the goals.",
        name="star_detection_metrics",
        storageClass="StructuredDataDict",
        dimensions=("instrument",),
    )


class EvaluateStarDetectorConfig(
    pipeBase.PipelineTaskConfig, pipelineConnections=EvaluateStarDetectorConnections
):
    """Configuration of `EvaluateStarDetectorTask`."""

    split = pexConfig.ChoiceField[str](
        doc="Star fields evaluated (assign_split of visit and detector).",
        default="test",
        allowed={
            "test": "held out from training and validation",
            "validation": "the split the model was selected on",
            "train": "the training fields",
            "all": "every field",
        },
    )
    split_fractions = pexConfig.ListField[float](
        doc="Fractions of train, validation and test, as for buildStarTiles.", default=[0.7, 0.15, 0.15]
    )
    split_seed = pexConfig.Field[int](
        doc="Seed of the split assignment; buildStarTiles uses 1 (independent of the trail splits).",
        default=1,
    )
    threshold = pexConfig.Field[float](
        doc="CNN heatmap threshold (None: the model's operating threshold, else 0.3).",
        default=None,
        optional=True,
    )
    peak_window = pexConfig.Field[int](
        doc="A CNN detection is the heatmap maximum in this window.", default=3
    )
    tile = pexConfig.Field[int](doc="CNN inference tile size (pixels).", default=512)
    overlap = pexConfig.Field[int](doc="Overlap of inference tiles (pixels).", default=64)
    batch_size = pexConfig.Field[int](doc="Tiles per forward pass.", default=4)
    device = pexConfig.Field[str](doc="auto (CUDA when available), cpu, cuda or cuda:N.", default="auto")
    threads = pexConfig.Field[int](doc="torch CPU threads (0: leave torch's setting).", default=0)
    bad_mask_planes = pexConfig.ListField[str](
        doc="Planes of pixels with no usable data (zero input as in the training tiles); stars and "
        "detections whose peak pixel is in them are not scored.",
        default=["NO_DATA", "BAD", "SATURATED"],
    )
    classical_threshold = pexConfig.Field[float](
        doc="PSF-filter SNR threshold of the classical detection.", default=5.0
    )
    match_min_radius = pexConfig.Field[float](doc="Smallest matching radius (pixels).", default=1.5)
    match_fwhm_fraction = pexConfig.Field[float](
        doc="Matching radius in PSF FWHM (the radius is the larger of the two).", default=0.5
    )
    match_method = pexConfig.ChoiceField[str](
        doc="One-to-one matching.",
        default="greedy",
        allowed={"greedy": "closest pairs first", "hungarian": "most matches, then least total distance"},
    )
    border_sigma = pexConfig.Field[float](
        doc="Stars and detections this many PSF sigmas from the edge are not scored.", default=3.0
    )
    snr_edges = pexConfig.ListField[float](doc="SNR bin edges.", default=list(DEFAULT_SNR_EDGES))
    snr_points = pexConfig.ListField[float](
        doc="SNRs at which the completeness is reported.", default=[5.0, 6.5]
    )
    snr_window = pexConfig.Field[float](
        doc="Half-width of the SNR windows of the reported completeness.", default=0.25
    )
    purity_snr = pexConfig.Field[float](
        doc="Purity is also reported for detections with measured SNR above this.", default=10.0
    )
    crowded_density = pexConfig.Field[float](
        doc="Fields with at least this many stars above the depth per arcmin^2 are crowded (if none is, "
        "the densest third).",
        default=100.0,
    )
    pixel_scale_arcsec = pexConfig.Field[float](
        doc="Pixel scale for densities when the truth has no star_density metadata.", default=0.2
    )
    interval_z = pexConfig.Field[float](doc="Wilson intervals of +- this many sigma.", default=1.0)
    goal_completeness = pexConfig.ListField[float](
        doc="Goal completeness at each of snr_points.", default=[0.5, 0.9]
    )
    goal_purity = pexConfig.Field[float](doc="Goal purity above purity_snr.", default=0.99)

    def validate(self):
        super().validate()
        if len(self.split_fractions) != 3 or not math.isclose(sum(self.split_fractions), 1.0, abs_tol=1e-9):
            raise pexConfig.FieldValidationError(
                EvaluateStarDetectorConfig.split_fractions, self, "need three fractions summing to 1"
            )
        if len(self.goal_completeness) != len(self.snr_points):
            raise pexConfig.FieldValidationError(
                EvaluateStarDetectorConfig.goal_completeness, self, "need one goal per snr_points entry"
            )
        if len(self.snr_edges) < 2 or any(b <= a for a, b in zip(self.snr_edges[:-1], self.snr_edges[1:])):
            raise pexConfig.FieldValidationError(
                EvaluateStarDetectorConfig.snr_edges, self, "need increasing edges"
            )


def _load(handle):
    """Return the object behind a dataset handle (or the object itself)."""
    return handle.get() if hasattr(handle, "dataId") and hasattr(handle, "get") else handle


def _data_id(handle) -> tuple[int, int] | None:
    data_id = getattr(handle, "dataId", None)
    if data_id is None:
        return None
    return int(data_id["visit"]), int(data_id["detector"])


def _concat(fields: Sequence[dict], detector: str, key: str, dtype) -> np.ndarray:
    parts = [np.asarray(f["scores"][detector][key], dtype=dtype) for f in fields]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def _value(entry) -> float | None:
    return None if entry is None else entry.get("value")


def star_goals(samples: dict, snr_points, goal_completeness, purity_snr: float, goal_purity: float) -> list:
    """Return the goal rows (goal, sample, measured, classical, target, met) of the evaluated samples.

    Parameters
    ----------
    samples : `dict`
        ``{"all": {...}, "crowded": {...}}``, each with ``cnn`` and
        ``classical`` metrics from
        `~lsst.trail_detect.evaluation.stars.star_detection_metrics` (or
        `None` when the sample is empty).
    snr_points, goal_completeness : sequence of `float`
        Goal completeness at each SNR.
    purity_snr, goal_purity : `float`
        Goal purity of detections with measured SNR above ``purity_snr``.

    Returns
    -------
    goals : `list` [`dict`]
        One row per goal and sample; ``met`` is `None` when nothing was
        measured.
    """
    goals = []
    for sample in ("all", "crowded"):
        result = samples.get(sample)
        if not result:
            continue
        cnn, classical = result["cnn"], result["classical"]
        rows = [
            (
                f"completeness >= {target:.0%} at SNR {point:g}",
                _value(cnn["completeness_at"].get(f"{point:g}")),
                _value(classical["completeness_at"].get(f"{point:g}")),
                target,
            )
            for point, target in zip(snr_points, goal_completeness)
        ]
        rows.append(
            (
                f"purity >= {goal_purity:.0%} above SNR {purity_snr:g}",
                _value(cnn["purity_above"]),
                _value(classical["purity_above"]),
                goal_purity,
            )
        )
        for goal, measured, reference, target in rows:
            goals.append(
                {
                    "goal": goal,
                    "sample": sample,
                    "measured": measured,
                    "classical": reference,
                    "target": float(target),
                    "met": None if measured is None else bool(measured >= target),
                }
            )
    return goals


def _json(value: Any) -> Any:
    """Make nested metrics JSON/YAML-safe: numpy to Python, non-finite floats to None."""
    if isinstance(value, dict):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json(v) for v in value.tolist()]
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer | int):
        return int(value)
    if isinstance(value, np.floating | float):
        return float(value) if math.isfinite(value) else None
    return value


class EvaluateStarDetectorTask(pipeBase.PipelineTask):
    """Score the star detector and the classical 5 sigma detection on held-out star fields.

    Only the fields of the configured split (by default ``test``, with
    the split fractions and seed of ``buildStarTiles``, so the model never
    trained or was selected on them) are read. On each, the CNN runs on
    the normalized pixels (`~lsst.trail_detect.evaluation.stars.detect_stars`)
    and the stack-like PSF-filter detection at 5 sigma on the calibrated
    pixels; no truth goes into either. Detections are then matched one to
    one to the true stars within ``max(1.5 px, 0.5 FWHM)``; completeness
    is binned by the true ``nu_psf``, purity by the SNR measured on the
    image (`~lsst.trail_detect.evaluation.stars.star_detection_metrics`).
    Everything is reported for all fields, crowded fields (at least
    ``crowded_density`` stars above the depth per arcmin^2, else the
    densest third) and the others, plus per field, with a ``goals`` list.
    """

    ConfigClass = EvaluateStarDetectorConfig
    _DefaultName = "evaluateStarDetector"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        images = butlerQC.get(inputRefs.images)
        truths = butlerQC.get(inputRefs.truths)
        model = butlerQC.get(inputRefs.model)
        outputs = self.run(images=images, truths=truths, model=model)
        butlerQC.put(outputs, outputRefs)

    def _select(self, images, truths, data_ids) -> list[tuple[tuple[int, int], Any, Any]]:
        """Pair images with truths by (visit, detector) and keep the configured split."""
        from ..tiles.tiling import assign_split

        c = self.config
        if len(images) != len(truths):
            raise ValueError(f"{len(images)} images but {len(truths)} truth tables.")
        if data_ids is None:
            ids = [_data_id(h) for h in images]
            truth_ids = [_data_id(h) for h in truths]
            if any(i is None for i in ids) or any(i is None for i in truth_ids):
                # In-memory objects: pair by position, identify by the truth metadata.
                truths = [_load(t) for t in truths]
                ids = [(int(t.meta["visit"]), int(t.meta["detector"])) for t in truths]
                truth_ids = ids
        else:
            ids = truth_ids = [(int(v), int(d)) for v, d in data_ids]
        by_id = dict(zip(truth_ids, truths))
        selected = []
        for data_id, image in sorted(zip(ids, images), key=lambda item: item[0]):
            if data_id not in by_id:
                self.log.warning("No truth for star field %s; skipped.", data_id)
                continue
            split = assign_split(*data_id, tuple(c.split_fractions), c.split_seed)
            if c.split == "all" or split == c.split:
                selected.append((data_id, image, by_id[data_id]))
        return selected

    def run(self, images, truths, model, data_ids=None) -> pipeBase.Struct:
        """Evaluate the star detector.

        Parameters
        ----------
        images : `list`
            Star fields: `lsst.images.VisitImage` objects or deferred
            handles (only those of the split are read).
        truths : `list`
            Their ``star_field_truth`` tables (or deferred handles), in
            the same order when there are no data IDs.
        model : `~lsst.trail_detect.models.storage.TrailDetectorModel`
            A ``star`` model.
        data_ids : `list` [`tuple` [`int`, `int`]], optional
            ``(visit, detector)`` of each image and truth; taken from the
            handles' data IDs or, for in-memory objects, from the truth
            metadata when not given.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``metrics`` (`dict`), JSON-serializable: ``settings``,
            ``fields`` (per field), ``all``, ``crowded`` and
            ``uncrowded`` (each with ``n_fields`` and ``cnn`` and
            ``classical`` metrics), ``crowding_rule`` and ``goals``.
        """
        import torch

        from ..detection.inference import resolve_device
        from ..imageutils import mask_planes, psf_sigma
        from ..models.networks import prepare_for_inference
        from .stars import crowded_fields, field_density, score_star_field, star_detection_metrics

        c = self.config
        if model.kind != "star":
            raise ValueError(f"evaluateStarDetector needs a 'star' model, not a {model.kind!r} model.")
        if c.threads > 0:
            torch.set_num_threads(c.threads)
        device = resolve_device(c.device)
        network = prepare_for_inference(model.build(device="cpu"), channels_last=device.type == "cpu")
        network = network.to(device)
        threshold = c.threshold if c.threshold is not None else model.threshold
        threshold = 0.3 if threshold is None else float(threshold)

        selected = self._select(images, truths, data_ids)
        self.log.info(
            "Evaluating %d %s star field(s) of %d with threshold %.3g.",
            len(selected),
            c.split,
            len(images),
            threshold,
        )
        fields = []
        for (visit, detector), image_handle, truth_handle in selected:
            exposure = _load(image_handle)
            truth = _load(truth_handle)
            sigma = psf_sigma(exposure)
            scores = score_star_field(
                exposure.image.array,
                exposure.variance.array,
                truth,
                sigma,
                network=network,
                normalization=model.metadata.get("normalization"),
                mask_planes=mask_planes(exposure),
                bad_planes=list(c.bad_mask_planes),
                threshold=threshold,
                tile=c.tile,
                overlap=c.overlap,
                batch_size=c.batch_size,
                window=c.peak_window,
                classical_threshold=c.classical_threshold,
                min_radius=c.match_min_radius,
                fwhm_fraction=c.match_fwhm_fraction,
                match_method=c.match_method,
                border_sigma=c.border_sigma,
            )
            fields.append(
                {
                    "visit": visit,
                    "detector": detector,
                    "psf_sigma": sigma,
                    "density": field_density(truth, exposure.image.array.shape, c.pixel_scale_arcsec),
                    "scores": scores,
                }
            )
            self.log.info(
                "Field %d/%d: %d scored stars, %d CNN and %d classical detections.",
                visit,
                detector,
                len(scores["truth_snr"]),
                len(scores["cnn"]["det_matched"]),
                len(scores["classical"]["det_matched"]),
            )

        crowded, rule = crowded_fields([f["density"] for f in fields], c.crowded_density)
        kwargs = {
            "snr_edges": list(c.snr_edges),
            "purity_snr": c.purity_snr,
            "snr_points": list(c.snr_points),
            "snr_window": c.snr_window,
            "z": c.interval_z,
        }

        def evaluate(group: list[dict]) -> dict | None:
            if not group:
                return None
            truth_snr = np.concatenate([f["scores"]["truth_snr"] for f in group])
            out = {"n_fields": len(group), "n_truth": int(len(truth_snr))}
            for name in _DETECTORS:
                out[name] = star_detection_metrics(
                    truth_snr,
                    _concat(group, name, "truth_matched", bool),
                    _concat(group, name, "det_matched", bool),
                    _concat(group, name, "det_snr", float),
                    **kwargs,
                )
            return out

        samples = {
            "all": evaluate(fields),
            "crowded": evaluate([f for f, k in zip(fields, crowded) if k]),
            "uncrowded": evaluate([f for f, k in zip(fields, crowded) if not k]),
        }
        per_field = []
        for f, is_crowded in zip(fields, crowded):
            one = evaluate([f])
            entry = {
                "visit": f["visit"],
                "detector": f["detector"],
                "psf_sigma": f["psf_sigma"],
                "density": f["density"],
                "crowded": bool(is_crowded),
                "match_radius": f["scores"]["match_radius"],
                "n_stars": f["scores"]["n_stars"],
                "n_truth": one["n_truth"],
            }
            for name in _DETECTORS:
                m = one[name]
                entry[name] = {
                    "n_detections": m["n_detections"],
                    "n_false": m["n_false"],
                    "completeness_at": {k: v["value"] for k, v in m["completeness_at"].items()},
                    "snr50": m["snr50"],
                    "snr90": m["snr90"],
                    "purity": m["purity"]["value"],
                    "purity_above": m["purity_above"]["value"],
                }
            per_field.append(entry)
        goals = star_goals(
            samples, list(c.snr_points), list(c.goal_completeness), c.purity_snr, c.goal_purity
        )
        metrics = {
            "settings": {
                "split": c.split,
                "split_fractions": list(c.split_fractions),
                "split_seed": c.split_seed,
                "threshold": threshold,
                "classical_threshold": c.classical_threshold,
                "match_radius_rule": f"max({c.match_min_radius:g} px, {c.match_fwhm_fraction:g} FWHM)",
                "match_method": c.match_method,
                "snr_window": c.snr_window,
                "crowded_density": c.crowded_density,
                "model_sha256": model.sha256,
                "truth_snr": "nu_psf",
                "detection_snr": "PSF-filter SNR measured on the image at the detection",
            },
            "n_fields": len(fields),
            "crowding_rule": rule,
            **samples,
            "fields": per_field,
            "goals": goals,
        }
        self._log_table(samples, goals)
        return pipeBase.Struct(metrics=_json(metrics))

    def _log_table(self, samples: dict, goals: list) -> None:
        c = self.config
        points = [f"{p:g}" for p in c.snr_points]
        header = (
            f"{'sample':<10} {'detector':<9} {'fields':>6} {'stars':>7} {'dets':>7} "
            + " ".join(f"{'C@' + p:>7}" for p in points)
            + f" {'SNR50':>6} {'SNR90':>6} {'purity':>7} {'P>' + format(c.purity_snr, 'g'):>7}"
        )

        def fmt(value, spec):
            return f"{value:{spec}}" if value is not None else f"{'-':>{spec.split('.')[0]}}"

        lines = [header]
        for sample, result in samples.items():
            if not result:
                continue
            for name in _DETECTORS:
                m = result[name]
                lines.append(
                    f"{sample:<10} {name:<9} {result['n_fields']:>6d} {m['n_truth']:>7d} "
                    f"{m['n_detections']:>7d} "
                    + " ".join(fmt(m["completeness_at"][p]["value"], "7.3f") for p in points)
                    + f" {fmt(m['snr50'], '6.2f')} {fmt(m['snr90'], '6.2f')}"
                    f" {fmt(m['purity']['value'], '7.4f')} {fmt(m['purity_above']['value'], '7.4f')}"
                )
        for g in goals:
            status = "n/a" if g["met"] is None else ("met" if g["met"] else "NOT met")
            measured = "-" if g["measured"] is None else f"{g['measured']:.3f}"
            lines.append(f"goal [{g['sample']}] {g['goal']}: {measured} ({status})")
        self.log.info("Star detection:\n%s", "\n".join(lines))
