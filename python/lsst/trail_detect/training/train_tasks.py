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

"""trainStarDetector and trainTrailDetector: gather a collection's shards and train."""

from __future__ import annotations

__all__ = (
    "TrainDetectorConfigBase",
    "TrainStarDetectorConfig",
    "TrainStarDetectorConnections",
    "TrainStarDetectorTask",
    "TrainTrailDetectorConfig",
    "TrainTrailDetectorConnections",
    "TrainTrailDetectorTask",
)

import tempfile
from pathlib import Path

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT

from .loop import DEFAULT_SELECTION_FP_BUDGET


class TrainStarDetectorConnections(pipeBase.PipelineTaskConnections, dimensions=("instrument",)):
    """Connections of `TrainStarDetectorTask`."""

    tiles = cT.Input(
        doc="Star-field training shards (all of the input collections).",
        name="star_training_tiles",
        storageClass="TileShard",
        dimensions=("instrument", "visit", "detector"),
        multiple=True,
        deferLoad=True,
    )
    model = cT.Output(
        doc="Trained star detector (heatmap and offset heads); its encoder pretrains the trail segmenter.",
        name="star_detector_model",
        storageClass="TrailDetectorModel",
        dimensions=(),
    )


class TrainTrailDetectorConnections(pipeBase.PipelineTaskConnections, dimensions=("instrument",)):
    """Connections of `TrainTrailDetectorTask`."""

    tiles = cT.Input(
        doc="Trail training shards (all of the input collections).",
        name="trail_training_tiles",
        storageClass="TileShard",
        dimensions=("instrument", "visit", "detector"),
        multiple=True,
        deferLoad=True,
    )
    pretrained = cT.Input(
        doc="Star detector whose encoder initializes the trail segmenter.",
        name="star_detector_model",
        storageClass="TrailDetectorModel",
        dimensions=(),
    )
    model = cT.Output(
        doc="Trained trail segmenter with its normalization, validation metrics and operating threshold.",
        name="trail_detector_model",
        storageClass="TrailDetectorModel",
        dimensions=(),
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        if config is not None and not config.use_pretrained_encoder:
            del self.pretrained


class TrainDetectorConfigBase(pipeBase.PipelineTaskConfig, pipelineConnections=TrainStarDetectorConnections):
    """Training settings shared by the star and trail training tasks."""

    size = pexConfig.ChoiceField[str](
        doc="Network size.",
        default="compact",
        allowed={"compact": "sized for CPU inference", "large": "wider and deeper, for GPUs"},
    )
    architecture_json = pexConfig.Field[str](
        doc='Full architecture as JSON (overrides size), e.g. \'{"name": "ResAttentionUNet", ...}\'.',
        default="",
        optional=True,
    )
    epochs = pexConfig.Field[int](doc="Maximum number of epochs.", default=20)
    batch_size = pexConfig.Field[int](doc="Tiles per batch.", default=8)
    learning_rate = pexConfig.Field[float](doc="AdamW learning rate (cosine schedule).", default=2e-3)
    weight_decay = pexConfig.Field[float](doc="AdamW weight decay.", default=1e-4)
    samples_per_epoch = pexConfig.Field[int](doc="Tiles drawn per epoch (0: the training split).", default=0)
    max_steps_per_epoch = pexConfig.Field[int](
        doc="Stop each epoch after this many steps (0: no limit).", default=0
    )
    patience = pexConfig.Field[int](doc="Early-stopping patience (epochs).", default=5)
    seed = pexConfig.Field[int](doc="Seed of the run.", default=0)
    threads = pexConfig.Field[int](doc="torch CPU threads (0: torch's default).", default=0)
    num_workers = pexConfig.Field[int](doc="DataLoader worker processes.", default=0)

    def training_config(self, kind: str):
        """Return the `~lsst.trail_detect.training.loop.TrainingConfig` of these settings."""
        import json

        from ..models.networks import default_architecture
        from .loop import TrainingConfig

        architecture = (
            json.loads(self.architecture_json)
            if self.architecture_json
            else default_architecture(kind, self.size)
        )
        return TrainingConfig(
            kind=kind,
            architecture=architecture,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            samples_per_epoch=self.samples_per_epoch or None,
            max_steps_per_epoch=self.max_steps_per_epoch or None,
            patience=self.patience,
            seed=self.seed,
            threads=self.threads or None,
            num_workers=self.num_workers,
            progress=False,
        )


class TrainStarDetectorConfig(TrainDetectorConfigBase, pipelineConnections=TrainStarDetectorConnections):
    """Configuration of `TrainStarDetectorTask`."""

    heatmap_weight = pexConfig.Field[float](doc="Weight of the CenterNet heatmap loss.", default=1.0)
    offset_weight = pexConfig.Field[float](doc="Weight of the sub-pixel offset loss.", default=1.0)


class TrainTrailDetectorConfig(TrainDetectorConfigBase, pipelineConnections=TrainTrailDetectorConnections):
    """Configuration of `TrainTrailDetectorTask`."""

    use_pretrained_encoder = pexConfig.Field[bool](
        doc="Initialize the encoder from star_detector_model (pretrained on star fields).", default=False
    )
    unfreeze_epochs = pexConfig.ListField[int](
        doc="With a pretrained encoder: epochs at which the next-deepest encoder stage is unfrozen.",
        default=[0, 2, 4, 6, 8],
    )
    bce_weight = pexConfig.Field[float](doc="Weight of the pixel BCE loss.", default=1.0)
    dice_weight = pexConfig.Field[float](doc="Weight of the soft Dice loss.", default=1.0)
    focal_tversky_weight = pexConfig.Field[float](doc="Weight of the focal Tversky loss.", default=0.0)
    pos_weight = pexConfig.Field[float](doc="BCE weight of trail pixels.", default=3.0)
    positive_fraction = pexConfig.Field[float](doc="Fraction of sampled tiles holding a trail.", default=0.6)
    curriculum_epochs = pexConfig.Field[int](
        doc="Epochs over which the faintest allowed trail falls from curriculum_start_nu to none.", default=3
    )
    curriculum_start_nu = pexConfig.Field[float](
        doc="Faintest trail (nu_det) in the first epoch.", default=8.0
    )
    instance_balance_power = pexConfig.Field[float](
        doc="Raise the loss weight of each truth component of n pixels by "
        "(instance_balance_reference / n) ** power, so that short trails count (0: off).",
        default=0.0,
    )
    instance_balance_reference = pexConfig.Field[float](
        doc="Components of at least this many pixels keep their weight.", default=400.0
    )
    instance_balance_max = pexConfig.Field[float](doc="Largest instance-balance factor.", default=4.0)
    short_trail_boost = pexConfig.Field[float](
        doc="Draw tiles holding a whole short trail (spanning at most short_trail_max_extent pixels) this "
        "many times more often among the tiles with trails (1: off).",
        default=1.0,
    )
    short_trail_max_extent = pexConfig.Field[float](
        doc="Longest extent (pixels) of a truth component counted as a short trail.", default=16.0
    )
    line_filter_lengths = pexConfig.ListField[float](
        doc="Lengths (pixels) of fixed segment matched filters whose responses to the image are added to "
        "the network's input (ResAttentionUNet line_filters); one per entry of line_filter_angles. Empty: "
        "none.",
        default=[],
    )
    line_filter_angles = pexConfig.ListField[int](
        doc="Number of orientations of each line filter length.", default=[]
    )
    selection_metric = pexConfig.ChoiceField[str](
        doc="Validation score that picks the best epoch and the operating threshold.",
        default="pixel_f1",
        allowed={
            "pixel_f1": "F1 over trail pixels (long trails dominate).",
            "object_f1": "F1 over trails, each truth component counting once.",
            "object_recall_at_fp": "Fraction of trails found at the lowest threshold whose false "
            "components stay within selection_fp_budget (the form of the detection goal).",
        },
    )
    selection_fp_budget = pexConfig.Field[float](
        doc="False components allowed per 4k x 4k-equivalent area of validation tiles, for "
        "selection_metric=object_recall_at_fp. They are raw components of the probability map, before the "
        "detection's shape rejection and score cut, so this is well above the detection's own budget.",
        default=DEFAULT_SELECTION_FP_BUDGET,
        check=lambda x: x > 0,
    )

    def validate(self):
        super().validate()
        if len(self.line_filter_lengths) != len(self.line_filter_angles):
            raise pexConfig.FieldValidationError(
                TrainTrailDetectorConfig.line_filter_angles,
                self,
                f"needs one entry per line_filter_lengths entry ({len(self.line_filter_lengths)}), not "
                f"{len(self.line_filter_angles)}",
            )


class _TrainDetectorTaskBase(pipeBase.PipelineTask):
    kind = ""

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        from ..tiles.shard import write_shard

        handles = butlerQC.get(inputRefs.tiles)
        with tempfile.TemporaryDirectory(prefix="trail_detect_train_") as tmp:
            paths = []
            for k, handle in enumerate(handles):
                paths.append(write_shard(handle.get(), Path(tmp) / f"shard_{k:05d}.h5"))
            pretrained = None
            provenance = {"input_runs": sorted({ref.run for ref in inputRefs.tiles})}
            if getattr(inputRefs, "pretrained", None) is not None:
                pretrained = Path(tmp) / "pretrained.safetensors"
                butlerQC.get(inputRefs.pretrained).save(pretrained)
                ref = inputRefs.pretrained
                provenance["pretrained_encoder"] = f"{ref.datasetType.name} in {ref.run} ({ref.id})"
            outputs = self.run(paths, pretrained=pretrained, provenance=provenance)
        butlerQC.put(outputs, outputRefs)

    def run(self, shard_paths, pretrained=None, provenance=None) -> pipeBase.Struct:
        """Train on shard files.

        Parameters
        ----------
        shard_paths : `list`
            HDF5 tile shards.
        pretrained : path-like, optional
            Star detector whose encoder initializes the network.
        provenance : `dict`, optional
            Recorded in the model metadata.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``model`` (`~lsst.trail_detect.models.storage.TrailDetectorModel`).
        """
        from .loop import train

        config = self._training_config()
        if pretrained is not None:
            config.pretrained_encoder = str(pretrained)
        self.log.info(
            "Training a %s detector on %d shards (%s).",
            self.kind,
            len(shard_paths),
            config.architecture.get("name"),
        )
        result = train(shard_paths, config, provenance=provenance, log=self.log.info)
        if pretrained is not None:
            # Record where the encoder came from, not the temporary file it was read from.
            result.model.metadata["training"]["pretrained_encoder"] = (provenance or {}).get(
                "pretrained_encoder", "star_detector_model"
            )
        return pipeBase.Struct(model=result.model)


class TrainStarDetectorTask(_TrainDetectorTaskBase):
    """Train the star detector (CenterNet heatmap and offsets) on star-field shards."""

    ConfigClass = TrainStarDetectorConfig
    _DefaultName = "trainStarDetector"
    kind = "star"

    def _training_config(self):
        config = self.config.training_config("star")
        config.loss = {"heatmap": self.config.heatmap_weight, "offset": self.config.offset_weight}
        return config


class TrainTrailDetectorTask(_TrainDetectorTaskBase):
    """Train the trail segmenter on trail shards, optionally from a pretrained encoder.

    Tiles holding trails are drawn at ``positive_fraction`` (those the
    stack-like detection missed oversampled), with a curriculum from bright
    to faint trails; with a pretrained encoder its stages are unfrozen
    progressively from the deepest. The operating threshold is chosen on
    the validation split.
    """

    ConfigClass = TrainTrailDetectorConfig
    _DefaultName = "trainTrailDetector"
    kind = "trail"

    def _training_config(self):
        c = self.config
        config = c.training_config("trail")
        config.loss = {
            "bce": c.bce_weight,
            "dice": c.dice_weight,
            "focal_tversky": c.focal_tversky_weight,
            "pos_weight": c.pos_weight,
        }
        config.positive_fraction = c.positive_fraction
        config.curriculum_epochs = c.curriculum_epochs
        config.curriculum_start_nu = c.curriculum_start_nu
        config.unfreeze_epochs = list(c.unfreeze_epochs) if c.use_pretrained_encoder else []
        config.selection_metric = c.selection_metric
        config.selection_fp_budget = c.selection_fp_budget
        if c.line_filter_lengths:
            config.line_filters = [
                [length, n] for length, n in zip(c.line_filter_lengths, c.line_filter_angles)
            ]
        if c.short_trail_boost != 1.0:
            config.oversample_small_trails = {
                "max_extent": c.short_trail_max_extent,
                "factor": c.short_trail_boost,
            }
        if c.instance_balance_power > 0:
            config.instance_balance = {
                "power": c.instance_balance_power,
                "reference_pixels": c.instance_balance_reference,
                "max_factor": c.instance_balance_max,
            }
        return config
