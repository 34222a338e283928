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

"""Trail detection on FITS files from any telescope (``trail-detect detect-fits``)."""

from __future__ import annotations

__all__ = ("FitsDetection", "detect_fits_file", "draw_detections")

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np

from .detect import DetectionResult, detect_trails, model_settings
from .fits_io import FitsImage, measure_psf_sigma, read_fits_image, robust_noise
from .inference import InferenceSettings
from .postprocess import PostprocessConfig

_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class FitsDetection:
    """Result of `detect_fits_file`.

    Attributes
    ----------
    fits : `~.fits_io.FitsImage`
        What was read.
    result : `~.detect.DetectionResult`
        The detection.
    psf_sigma : `float`
        PSF sigma used (pixels) and ``psf_source`` where it came from.
    catalog_path, plot_path : `pathlib.Path` or `None`
        Files written.
    """

    fits: FitsImage
    result: DetectionResult
    psf_sigma: float
    psf_source: str
    noise: float
    catalog_path: Path | None = None
    plot_path: Path | None = None


def draw_detections(path: str | os.PathLike, image: np.ndarray, catalog, title: str = "") -> None:
    """Write a PNG of the image (zscale) with the detected trails drawn over it."""
    from ..plotting import new_figure, show_image

    height, width = image.shape
    fig, ax = new_figure(size=8.0 * min(max(width / max(height, 1), 0.5), 2.0))
    try:
        show_image(ax, np.where(np.isfinite(image), image, np.nan))
        for row in catalog:
            ax.plot(
                [row["x_start"], row["x_end"]],
                [row["y_start"], row["y_end"]],
                "-",
                color="red",
                lw=1.5,
                alpha=0.8,
            )
            ax.annotate(
                f"{row['trail_id']}: score {row['score']:.2f}, SNR {row['snr']:.1f}",
                (row["x"], row["y"]),
                color="yellow",
                fontsize=8,
                xytext=(5, 5),
                textcoords="offset points",
            )
        ax.set_title(title or f"{len(catalog)} trails")
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(-0.5, height - 0.5)
        fig.savefig(path, dpi=100, bbox_inches="tight")
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)


def detect_fits_file(
    path: str | os.PathLike,
    model,
    *,
    network=None,
    out_dir: str | os.PathLike | None = None,
    hdu: int | str | None = None,
    psf_fwhm: float | None = None,
    threshold: float | None = None,
    min_score: float | None = None,
    settings: InferenceSettings | None = None,
    config: PostprocessConfig | None = None,
    keep_rejected: bool = False,
    plot: bool = True,
    calibration: str = "visit",
) -> FitsDetection:
    """Find trails in one FITS image and write its catalog (ECSV) and a PNG.

    Parameters
    ----------
    path : path-like
        The FITS file: a plain image (with optional variance, weight and
        mask HDUs) or a legacy LSST calexp / Exposure.
    model : `~lsst.trail_detect.models.storage.TrailDetectorModel`
        A ``trail`` model.
    network : `torch.nn.Module`, optional
        The model's network from `~.detect.load_network` (built here if
        not given; pass it when looping over many files).
    out_dir : path-like, optional
        Where ``<stem>.trails.ecsv`` and ``<stem>.trails.png`` go; nothing
        is written if None.
    hdu : `int` or `str`, optional
        Image HDU of a plain file.
    psf_fwhm : `float`, optional
        PSF FWHM in pixels; otherwise the file's PSF model (legacy
        calexps) or a measurement from its stars.
    threshold : `float`, optional
        Probability threshold (default: the model's).
    min_score : `float`, optional
        Lowest calibrated score kept (default: the model's).
    settings, config : optional
        Inference and post-processing parameters.
    keep_rejected : `bool`, optional
        Keep rejected candidates in the catalog, with the reason.
    plot : `bool`, optional
        Write the PNG.
    calibration : `str`, optional
        The model's calibration to use: ``"visit"`` (calibrated images) or
        ``"difference"`` (difference images, with the source search).

    Returns
    -------
    detection : `FitsDetection`

    Raises
    ------
    ValueError
        If the file cannot be used (the message names it and the reason),
        including when no PSF width is available.
    """
    from .detect import load_network

    fits_image = read_fits_image(path, hdu=hdu)
    source = fits_image.source
    image = fits_image.image.astype(np.float32)
    background, noise = robust_noise(image, fits_image.bad)
    if not (np.isfinite(noise) and noise > 0):
        raise ValueError(f"{source}: the image has no measurable noise (constant or empty data).")
    if fits_image.kind == "plain":
        # Plain images usually keep their sky; calexps are background-subtracted already.
        image = image - np.float32(background)
        background = 0.0
    if fits_image.variance is not None:
        variance = fits_image.variance.astype(np.float32)
    else:
        variance = np.full(image.shape, noise**2, dtype=np.float32)
    if psf_fwhm is not None:
        if not psf_fwhm > 0:
            raise ValueError(f"--psf-fwhm must be positive, not {psf_fwhm}.")
        sigma, psf_source = psf_fwhm / 2.3548, "given"
    elif fits_image.psf_sigma is not None:
        sigma, psf_source = float(fits_image.psf_sigma), "file PSF model"
    else:
        try:
            sigma = measure_psf_sigma(image, fits_image.bad, background=background, noise=noise)
        except ValueError as err:
            raise ValueError(
                f"{source}: cannot measure the PSF width ({err}); give it with --psf-fwhm."
            ) from err
        psf_source = "measured from stars"
    settings_from_model = model_settings(
        model, threshold=threshold, min_score=min_score, calibration=calibration
    )
    if network is None:
        network = load_network(model, (settings or InferenceSettings()).device)
    pixel_to_sky = None
    if fits_image.wcs is not None:
        wcs = fits_image.wcs

        def pixel_to_sky(x, y):
            world = wcs.pixel_to_world(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
            return np.asarray(world.ra.deg), np.asarray(world.dec.deg)

    no_data = fits_image.bad & ~fits_image.saturated
    result = detect_trails(
        image,
        variance,
        network=network,
        psf_sigma=sigma,
        **settings_from_model,
        bad=fits_image.bad,
        saturated=fits_image.saturated,
        no_data=no_data,
        pixel_to_sky=pixel_to_sky,
        settings=settings,
        config=config,
        keep_rejected=keep_rejected,
    )
    catalog = result.catalog
    catalog.meta.update(
        {
            "source_file": str(path),
            "psf_sigma_source": psf_source,
            "noise": float(noise),
            "has_wcs": fits_image.wcs is not None,
            "model_sha256": model.sha256,
        }
    )
    detection = FitsDetection(fits_image, result, sigma, psf_source, float(noise))
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = Path(path).name
        for suffix in (".fits.fz", ".fits.gz", ".fits", ".fit", ".fts"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        catalog_path = out / f"{stem}.trails.ecsv"
        plot_path = out / f"{stem}.trails.png"
        tmp_catalog = catalog_path.with_name(catalog_path.name + ".tmp")
        tmp_plot = plot_path.with_name(plot_path.name + ".tmp.png")
        try:
            catalog.write(tmp_catalog, format="ascii.ecsv", overwrite=True)
            if plot:
                draw_detections(tmp_plot, image, catalog, title=f"{Path(path).name}: {len(catalog)} trails")
            os.replace(tmp_catalog, catalog_path)
            if plot:
                os.replace(tmp_plot, plot_path)
        finally:
            for tmp in (tmp_catalog, tmp_plot):
                tmp.unlink(missing_ok=True)
        detection.catalog_path = catalog_path
        detection.plot_path = plot_path if plot else None
    return detection
