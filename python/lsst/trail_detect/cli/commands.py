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

"""Subcommands of ``trail-detect``."""

from __future__ import annotations

__all__ = ("export_model", "export_tiles", "fetch_gaia", "ingest_catalog", "make_repo", "train")

import click


def _fail(err: Exception) -> click.ClickException:
    return click.ClickException(str(err))


@click.command("make-repo")
@click.argument("repo", type=click.Path(file_okay=False))
@click.option("--visits", default=4, show_default=True, type=click.IntRange(min=1), help="Number of visits.")
@click.option(
    "--detectors",
    default=4,
    show_default=True,
    type=click.IntRange(1, 9),
    help="Detectors per visit (SimCam is one 3x3 raft).",
)
@click.option(
    "--size",
    default=1024,
    show_default=True,
    type=click.IntRange(64, 4096),
    help="Image size per detector in pixels (4096 for a full sensor).",
)
@click.option(
    "--seed",
    default=1,
    show_default=True,
    type=int,
    help="Survey seed; the repository is reproducible from it.",
)
@click.option(
    "--catalog",
    default="synthetic",
    show_default=True,
    help="Star catalog: 'synthetic' (offline, Gaia-like counts), 'gaia' (query the Gaia archive), "
    "or a catalog FILE (FITS, ECSV, parquet, CSV).",
)
@click.option("--field-ra", default=None, type=float, help="Field centre RA (deg).")
@click.option("--field-dec", default=None, type=float, help="Field centre Dec (deg).")
@click.option("--bands", default="r", show_default=True, help="Bands the visits cycle through (e.g. 'gri').")
@click.option(
    "--mag-limit",
    default=21.0,
    show_default=True,
    type=float,
    help="Faint G limit of catalog stars (fainter stars come from a density model).",
)
@click.option(
    "-j",
    "--jobs",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="Processes for pipetask run.",
)
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help="Cache for Gaia queries.")
def make_repo(
    repo, visits, detectors, size, seed, catalog, field_ra, field_dec, bands, mag_limit, jobs, cache_dir
):
    """Create REPO holding the embedded simulated survey.

    Creates the Butler repository, registers SimCam with its visits and
    detector regions, ingests the star catalog as gaia_dr3_stars (one
    dataset per htm7 trixel) and runs pipelines/SimulateSurvey.yaml to make
    visit_image, visit_image_truth and source.
    """
    from ..simulation.make_repo import MakeRepoError
    from ..simulation.make_repo import make_repo as _make_repo
    from ..simulation.survey import DEFAULT_FIELD

    field = (
        DEFAULT_FIELD[0] if field_ra is None else field_ra,
        DEFAULT_FIELD[1] if field_dec is None else field_dec,
    )
    try:
        result = _make_repo(
            repo,
            visits=visits,
            detectors=detectors,
            size=size,
            seed=seed,
            catalog=catalog,
            field=field,
            bands=bands,
            mag_limit=mag_limit,
            jobs=jobs,
            cache_dir=cache_dir,
            echo=click.echo,
        )
    except (MakeRepoError, ValueError) as err:
        raise _fail(err) from None
    click.echo(
        f"Made {result.repo} in {result.seconds:.0f} s: {len(result.visits)} visits x "
        f"{len(result.detectors)} detectors, {result.n_stars} catalog stars in "
        f"{result.n_star_shards} shards.\n"
        f"Outputs are in collection {result.output_collection}; look at them with\n"
        f"  butler query-collections {result.repo}\n"
        f"  butler query-datasets {result.repo} visit_image source visit_image_truth "
        f"--collections {result.output_collection}"
    )


@click.command("fetch-gaia")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--ra", required=True, type=float, help="Cone centre RA (deg).")
@click.option("--dec", required=True, type=click.FloatRange(-90, 90), help="Cone centre Dec (deg).")
@click.option(
    "--radius", required=True, type=click.FloatRange(min=0, min_open=True), help="Cone radius (deg)."
)
@click.option("--mag-limit", default=21.0, show_default=True, type=float, help="Faint G limit.")
@click.option("--cache-dir", default=None, type=click.Path(file_okay=False), help="Query cache directory.")
@click.option(
    "--overwrite/--no-overwrite", default=False, show_default=True, help="Replace OUT if it exists."
)
def fetch_gaia(out, ra, dec, radius, mag_limit, cache_dir, overwrite):
    """Query Gaia DR3 for the stars in a cone and write them to OUT (FITS, ECSV, parquet)."""
    from ..simulation import gaia

    try:
        table = gaia.fetch_gaia_cone(ra, dec, radius, mag_limit, cache_dir=cache_dir)
        gaia.write_star_catalog(table, out, overwrite=overwrite)
    except (gaia.GaiaUnavailableError, gaia.StarCatalogError, ValueError, OSError) as err:
        raise _fail(err) from None
    click.echo(f"Wrote {len(table)} Gaia DR3 stars to {out}.")


@click.command("ingest-catalog")
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
@click.argument("catalog_file", metavar="FILE", type=click.Path(dir_okay=False))
@click.option("--run", default="refcats/gaia_dr3", show_default=True, help="RUN collection to write to.")
@click.option("--dataset-type", default="gaia_dr3_stars", show_default=True, help="Dataset type name.")
def ingest_catalog(repo, catalog_file, run, dataset_type):
    """Shard a star catalog FILE by htm7 trixel and ingest it into REPO."""
    from lsst.daf.butler import Butler

    from ..simulation import gaia

    try:
        table = gaia.read_star_catalog(catalog_file)
        butler = Butler.from_config(repo, writeable=True)
        n = gaia.ingest_star_catalog(butler, table, run=run, dataset_type=dataset_type)
    except (gaia.StarCatalogError, ValueError) as err:
        raise _fail(err) from None
    click.echo(f"Ingested {len(table)} stars from {catalog_file} as {n} {dataset_type} datasets in {run}.")


@click.command("export-tiles")
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--collections", required=True, help="Collection(s) holding the shards (comma-separated).")
@click.option(
    "--dataset-type",
    default="trail_training_tiles",
    show_default=True,
    help="Shard dataset type (trail_training_tiles or star_training_tiles).",
)
@click.option("--where", default="", help="Butler query restricting the data IDs.")
@click.option(
    "--overwrite/--no-overwrite", default=False, show_default=True, help="Replace OUT if it exists."
)
def export_tiles(repo, out, collections, dataset_type, where, overwrite):
    """Gather the tile shards of REPO into one HDF5 file OUT for training outside the Butler.

    Refuses shards whose splits overlap (the same visit and detector in two
    splits) or that differ in kind, tile size or normalization method.
    """
    from pathlib import Path

    from lsst.daf.butler import Butler

    from ..tiles.shard import concatenate_shards, write_shard

    if Path(out).exists() and not overwrite:
        raise click.ClickException(f"{out} exists; pass --overwrite to replace it.")
    butler = Butler.from_config(repo, collections=collections.split(","))
    refs = sorted(
        butler.query_datasets(dataset_type, where=where, limit=None, explain=False),
        key=lambda r: tuple(r.dataId.required.values()),
    )
    if not refs:
        raise click.ClickException(f"no {dataset_type} datasets in {collections}.")
    try:
        shard = concatenate_shards([butler.get(ref) for ref in refs])
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    write_shard(shard, out)
    counts = {s: int((shard.tiles["split"] == s).sum()) for s in ("train", "validation", "test")}
    click.echo(
        f"Wrote {len(shard)} tiles from {len(refs)} shards to {out}: "
        + ", ".join(f"{k} {v}" for k, v in counts.items())
        + "."
    )


@click.command("train")
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Model file to write (.safetensors)."
)
@click.option(
    "--kind",
    type=click.Choice(["trail", "star"]),
    default="trail",
    show_default=True,
    help="Trail segmenter or star detector (must match the shards).",
)
@click.option(
    "--size",
    type=click.Choice(["compact", "large"]),
    default="compact",
    show_default=True,
    help="Network size.",
)
@click.option("--epochs", type=int, default=20, show_default=True, help="Maximum epochs.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Tiles per batch.")
@click.option(
    "--pretrained",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Star-detector model whose encoder initializes the network.",
)
@click.option(
    "--init-model",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Trained model of the same kind to fine-tune: all its weights and its architecture (--size is "
    "then ignored).",
)
@click.option(
    "--config",
    "config_json",
    default=None,
    help="JSON object of further training settings (see lsst.trail_detect.training.loop.TrainingConfig).",
)
@click.option(
    "--checkpoint-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Write a checkpoint every epoch here; with --resume, continue from it.",
)
@click.option("--resume/--no-resume", default=False, show_default=True, help="Resume from --checkpoint-dir.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the run.")
def train(
    shards,
    out,
    kind,
    size,
    epochs,
    batch_size,
    pretrained,
    init_model,
    config_json,
    checkpoint_dir,
    resume,
    seed,
):
    """Train a network on HDF5 tile SHARDS (from export-tiles or the Butler) and write it to --out.

    Runs on one process, or under torchrun for distributed data parallel:
    torchrun --nproc_per_node 2 -m lsst.trail_detect.training SHARDS --out MODEL
    """
    import json

    from ..models.networks import default_architecture
    from ..training.loop import TrainingConfig
    from ..training.loop import train as run_training

    settings = {
        "kind": kind,
        "architecture": default_architecture(kind, size),
        "epochs": epochs,
        "batch_size": batch_size,
        "seed": seed,
        "checkpoint_dir": checkpoint_dir,
        "resume": resume,
        "pretrained_encoder": pretrained,
        "init_model": init_model,
    }
    if init_model:
        settings["architecture"] = None
    if pretrained and kind == "trail":
        settings["unfreeze_epochs"] = [0, 2, 4, 6, 8]
    if config_json:
        try:
            settings.update(json.loads(config_json))
        except json.JSONDecodeError as err:
            raise click.ClickException(f"--config is not valid JSON: {err}") from None
    try:
        config = TrainingConfig.from_dict(settings)
        result = run_training(list(shards), config, out=out, log=click.echo)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    best = result.model.metadata.get("validation", {})
    click.echo(
        f"Best epoch {best.get('epoch')}: validation F1 {best.get('f1', float('nan')):.3f} at threshold "
        f"{result.model.threshold:.2f}; model written to {out}."
    )


@click.command("export-model")
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--collections", required=True, help="Collection(s) holding the model (comma-separated).")
@click.option("--dataset-type", default="trail_detector_model", show_default=True, help="Model dataset type.")
def export_model(repo, out, collections, dataset_type):
    """Copy a model from REPO to the file OUT (safetensors)."""
    from lsst.daf.butler import Butler

    butler = Butler.from_config(repo, collections=collections.split(","))
    model = butler.get(dataset_type)
    model.save(out)
    click.echo(f"Wrote {model.summary()} to {out}.")


def _load_trail_model(model_path):
    from ..models.storage import TrailDetectorModel
    from ..paths import default_model_path

    path = model_path or default_model_path()
    try:
        model = TrailDetectorModel.load(path)
    except (OSError, ValueError) as err:
        raise _fail(err) from err
    if model.kind != "trail":
        raise click.ClickException(f"{path} holds a {model.kind!r} model, not a trail model.")
    return model


@click.command("detect-fits")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "out_dir",
    default=".",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Directory for FILE.trails.ecsv and FILE.trails.png.",
)
@click.option(
    "--model",
    "model_path",
    default=None,
    type=click.Path(dir_okay=False),
    help="Trail model file (.safetensors); default: the model shipped with the package.",
)
@click.option(
    "--psf-fwhm",
    type=float,
    default=None,
    help="PSF FWHM in pixels (default: the file's PSF model, or measured from its stars).",
)
@click.option("--hdu", default=None, help="Image HDU (index or EXTNAME) of plain FITS files.")
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Probability threshold (default: the model's operating threshold).",
)
@click.option(
    "--min-score",
    type=click.FloatRange(0, 1),
    default=None,
    help="Lowest calibrated score kept (default: the model's, chosen for its false-positive budget).",
)
@click.option(
    "--threads", type=int, default=0, show_default=True, help="torch CPU threads (0: torch's default)."
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option(
    "--keep-rejected/--no-keep-rejected",
    default=False,
    show_default=True,
    help="Keep rejected candidates in the catalog with the reason.",
)
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write the PNG.")
@click.option(
    "--calibration",
    type=click.Choice(["visit", "difference"]),
    default="visit",
    show_default=True,
    help="The model's calibration: for calibrated visit images, or for difference images (adds the source "
    "search for short trails).",
)
def detect_fits(
    files,
    out_dir,
    model_path,
    psf_fwhm,
    hdu,
    threshold,
    min_score,
    threads,
    device,
    keep_rejected,
    plot,
    calibration,
):
    """Find trails in FITS images from any telescope.

    Each FILE is a plain FITS image (optionally with VARIANCE, WEIGHT and
    MASK/DQ extensions and a celestial WCS) or a legacy LSST calexp. Noise
    comes from the variance plane or a robust estimate, the PSF width from
    --psf-fwhm, the file's PSF model or its stars. Writes FILE.trails.ecsv
    (one row per trail) and FILE.trails.png (the trails drawn over the image)
    in --out.
    """
    import torch

    from ..detection.detect import load_network
    from ..detection.fits_detect import detect_fits_file
    from ..detection.inference import InferenceSettings

    if threads > 0:
        torch.set_num_threads(threads)
    model = _load_trail_model(model_path)
    settings = InferenceSettings(device=device, threads=threads)
    try:
        network = load_network(model, device)
    except ValueError as err:
        raise _fail(err) from err
    if isinstance(hdu, str) and hdu.isdigit():
        hdu = int(hdu)
    failures = 0
    for path in files:
        try:
            detection = detect_fits_file(
                path,
                model,
                network=network,
                out_dir=out_dir,
                hdu=hdu,
                psf_fwhm=psf_fwhm,
                threshold=threshold,
                min_score=min_score,
                settings=settings,
                keep_rejected=keep_rejected,
                plot=plot,
                calibration=calibration,
            )
        except (OSError, ValueError) as err:
            failures += 1
            click.echo(f"Error: {err}", err=True)
            continue
        catalog = detection.result.catalog
        timing = detection.result.timing
        click.echo(
            f"{path}: {len(catalog)} trails ({detection.fits.kind}, PSF sigma {detection.psf_sigma:.2f} px "
            f"{detection.psf_source}, {'with' if detection.fits.wcs is not None else 'no'} WCS; "
            f"{timing['inference'] + timing['postprocess']:.1f} s) -> {detection.catalog_path}"
        )
    if failures:
        raise click.ClickException(f"{failures} of {len(files)} files could not be searched.")


@click.command("calibrate")
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option(
    "--collections",
    required=True,
    help="Collection(s) with injected images and their truth (comma-separated).",
)
@click.option(
    "--model",
    "model_path",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="Model file to calibrate (default: trail_detector_model from --model-collections).",
)
@click.option("--model-collections", default=None, help="Collection(s) holding trail_detector_model.")
@click.option(
    "--split",
    default="validation",
    show_default=True,
    help="Split(s) whose images are used, comma-separated (e.g. validation,test), or 'all' for a survey "
    "that training never saw.",
)
@click.option("--split-seed", default=0, show_default=True, type=int, help="Seed of the split assignment.")
@click.option("--where", default="", help="Butler query restricting the data IDs.")
@click.option(
    "--max-fp",
    default=10.0,
    show_default=True,
    type=float,
    help="False positives allowed per 4k x 4k detector at the operating point (min_score).",
)
@click.option(
    "--method",
    type=click.Choice(["logistic", "isotonic"]),
    default="logistic",
    show_default=True,
    help="Logistic regression on probability, length and SNR, or an isotonic map of the mean probability.",
)
@click.option(
    "--threads", type=int, default=0, show_default=True, help="torch CPU threads (0: torch's default)."
)
@click.option(
    "--line-search/--no-line-search",
    default=False,
    show_default=True,
    help="Also calibrate the source-masked matched-filter line search for faint trails and store it in "
    "the model, so that detectTrails runs it.",
)
@click.option(
    "--line-search-config",
    default=None,
    help="Line search settings as JSON (LineSearchConfig fields, e.g. '{\"threshold\": 6.0}').",
)
@click.option(
    "--source-search/--no-source-search",
    default=False,
    show_default=True,
    help="Also take every significant source as a candidate (for difference images: the short trails the "
    "network misses), calibrate those candidates and store the search in the model.",
)
@click.option(
    "--source-search-config",
    default=None,
    help="Source search settings as JSON (SourceSearchConfig fields, e.g. '{\"threshold\": 5.5}').",
)
@click.option(
    "--calibration",
    "target",
    type=click.Choice(["visit", "difference"]),
    default="visit",
    show_default=True,
    help="Store the result as the model's calibration for visit images or for difference images (the "
    "other is kept).",
)
@click.option(
    "--template-type",
    default=None,
    help="Dataset type of the templates of difference images, whose SNR under each candidate the "
    "calibration weighs (default: template_detector with --calibration difference; 'none' to leave "
    "them out).",
)
@click.option(
    "--image-type",
    default="injected_visit_image",
    show_default=True,
    help="Dataset type of the injected images searched (e.g. injected_difference_image).",
)
@click.option(
    "--folds",
    default=4,
    show_default=True,
    type=click.IntRange(min=1),
    help="Choose min_score on out-of-fold scores: each image scored by the calibration fitted on the other "
    "folds' images (1: on the scores of the calibration fitted on all of them).",
)
def calibrate(
    repo,
    out,
    collections,
    model_path,
    model_collections,
    split,
    split_seed,
    where,
    max_fp,
    method,
    threads,
    line_search,
    line_search_config,
    source_search,
    source_search_config,
    target,
    template_type,
    image_type,
    folds,
):
    """Calibrate a trail model's scores on validation images and write it to OUT.

    Runs the detection on the injected images of one split (by default the
    validation split of the tile builders, never trained on), matches the
    detections to the injected truth, fits the calibrated score (0.9 = 90%
    real; a logistic regression, or an isotonic map of the mean probability)
    and chooses min_score, the operating point with at most --max-fp false
    positives per 4k x 4k detector, on out-of-fold scores (--folds). With
    --line-search, the line search's candidates get a calibration of their
    own and one min_score is chosen for both sources together.
    """
    import torch

    from lsst.daf.butler import Butler

    from ..detection.calibration import butler_samples, calibrate_trail_model
    from ..detection.line_search import LineSearchConfig
    from ..detection.source_search import SourceSearchConfig
    from ..models.storage import TrailDetectorModel

    search = _search_config(LineSearchConfig, line_search, line_search_config, "line-search")
    sources = _search_config(SourceSearchConfig, source_search, source_search_config, "source-search")

    if template_type is None:
        template_type = "template_detector" if target == "difference" else None
    elif template_type.lower() == "none":
        template_type = None
    if threads > 0:
        torch.set_num_threads(threads)
    butler = Butler.from_config(repo, collections=collections.split(","))
    if model_path is not None:
        model = _load_trail_model(model_path)
    elif model_collections:
        model = butler.get("trail_detector_model", collections=model_collections.split(","))
    else:
        raise click.UsageError("give --model or --model-collections.")
    if not isinstance(model, TrailDetectorModel) or model.kind != "trail":
        raise click.ClickException("the model to calibrate must be a trail model.")
    try:
        calibrated, summary = calibrate_trail_model(
            model,
            butler_samples(
                butler,
                split=split,
                split_seed=split_seed,
                where=where,
                image_type=image_type,
                template_type=template_type,
            ),
            max_fp_per_detector=max_fp,
            method=method,
            provenance={
                "collections": collections,
                "split": split,
                "split_seed": split_seed,
                "image_type": image_type,
                "template_type": template_type,
            },
            line_search=search,
            source_search=sources,
            target=target,
            workers=max(threads, 1),
            folds=folds,
        )
    except ValueError as err:
        raise _fail(err) from err
    calibrated.save(out)
    click.echo(
        f"Calibrated on {summary['n_images']} {'' if split == 'all' else split + ' '}images "
        f"({summary['area_4k_detectors']:.2f} 4k detectors): "
        f"{summary['n_matched']} of {summary['n_truth']} injected trails matched, "
        f"{summary['false_positives_per_4k_detector']:.1f} false positives per 4k detector; min_score "
        f"{summary['min_score']:.3f} keeps {summary['completeness_at_min_score']:.1%} of the trails with "
        f"{summary['false_positives_per_4k_detector_at_min_score']:.1f} false positives per 4k detector "
        f"(scored out of fold, {summary['folds']} folds). Wrote {out}."
    )
    bins = summary.get("completeness_at_min_score_nu_det")
    if bins:
        click.echo(
            "Completeness at min_score by nu_det: "
            + ", ".join(
                f"{label}: {'-' if value is None else f'{value:.3f}'}" for label, value in bins.items()
            )
        )


def _search_config(config_class, enabled: bool, text: str | None, option: str):
    """The search settings of ``--OPTION`` (with JSON from ``--OPTION-config``), or `None` when it is off."""
    import json

    if not enabled:
        if text:
            raise click.UsageError(f"--{option}-config needs --{option}.")
        return None
    try:
        return config_class.from_dict(json.loads(text) if text else {})
    except (ValueError, TypeError) as err:
        raise click.BadParameter(str(err), param_hint=f"--{option}-config") from err


@click.command("import-model")
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
@click.argument("model_file", metavar="FILE", type=click.Path(exists=True, dir_okay=False))
@click.option("--run", required=True, help="RUN collection to put the model in (must not hold one already).")
@click.option(
    "--dataset-type",
    default=None,
    help="Dataset type (default: trail_detector_model or star_detector_model).",
)
def import_model(repo, model_file, run, dataset_type):
    """Put a model file (e.g. from train or calibrate) in REPO as a dimensionless dataset."""
    from lsst.daf.butler import Butler, CollectionType, DatasetType

    from ..models.storage import TrailDetectorModel

    try:
        model = TrailDetectorModel.load(model_file)
    except (OSError, ValueError) as err:
        raise _fail(err) from err
    name = dataset_type or f"{model.kind}_detector_model"
    butler = Butler.from_config(repo, writeable=True)
    butler.registry.registerDatasetType(
        DatasetType(name, (), "TrailDetectorModel", universe=butler.dimensions)
    )
    butler.registry.registerCollection(run, CollectionType.RUN)
    try:
        butler.put(model, name, run=run)
    except Exception as err:  # e.g. a dataset of that type already in the run
        raise click.ClickException(f"cannot put {model_file} in {run}: {err}") from err
    click.echo(f"Put {model.summary()} in {run} as {name}.")


@click.command("report")
@click.argument("repo", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--collections", required=True, help="Collection(s) with trail_detection_metrics (comma-separated)."
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Report directory.")
@click.option("--title", default="Trail detection", show_default=True, help="Page title.")
def report(repo, collections, out_dir, title):
    """Write a self-contained HTML report of trail_detection_metrics (and star_detection_metrics)."""
    from lsst.daf.butler import Butler, MissingDatasetTypeError

    from ..evaluation.metrics import headline_table
    from ..evaluation.report import write_report

    butler = Butler.from_config(repo, collections=collections.split(","))

    def query(name):
        try:
            return butler.query_datasets(name, limit=None, explain=False)
        except MissingDatasetTypeError:
            return []

    refs = query("trail_detection_metrics")
    if not refs:
        raise click.ClickException(
            f"no trail_detection_metrics in {collections}; "
            "run pipelines/EvaluateTrails.yaml (or EndToEnd.yaml)."
        )
    metrics = dict(butler.get(refs[0]))
    star_refs = query("star_detection_metrics")
    if star_refs:
        metrics["star_detection"] = dict(butler.get(star_refs[0]))
    metrics["context"] = {"repository": str(repo), "collections": collections, "run": refs[0].run}
    seconds = []
    for ref in query("detectTrails_metadata"):
        task_metadata = butler.get(ref)["detectTrails"]
        if "seconds_inference" in task_metadata:
            seconds.append(
                task_metadata["seconds_inference"]
                + task_metadata["seconds_postprocess"]
                + task_metadata.get("seconds_line_search", 0.0)
            )
    if seconds:
        import numpy as np

        metrics["context"]["detectTrails seconds per image (median)"] = float(np.median(seconds))
    path = write_report(metrics, out_dir, title=title)
    click.echo(headline_table({k: v for k, v in metrics.items() if k not in ("star_detection", "context")}))
    if seconds:
        click.echo(
            f"detectTrails: median {np.median(seconds):.2f} s per image (inference, post-processing and any "
            "line search) over "
            f"{len(seconds)} images."
        )
    click.echo(f"Report written to {path}.")
