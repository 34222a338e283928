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

"""Reading FITS images from any telescope into plain numpy arrays.

Two layouts are understood:

``lsst_calexp``
    A legacy LSST ``Exposure`` FITS file (calexp, visit image, ...) as
    written by afw: HDUs with ``EXTNAME`` ``IMAGE``, ``MASK`` (integer bit
    planes named by ``MP_<NAME>`` cards) and ``VARIANCE``, followed by an
    afw archive from which a ``GaussianPsf`` width is read when present.
``plain``
    Any other file: the first HDU with 2-D image data (or the one asked
    for), with optional variance, inverse-variance (weight), error and mask
    extensions recognised by their ``EXTNAME``.

Pixel coordinates are 0-based indices of the returned arrays (x = column,
y = row); the returned `astropy.wcs.WCS` maps exactly those (astropy's
pixel convention is 0-based and the afw header WCS is written for the
array, so no ``xy0`` offset is applied).

The module also measures what the trail detector needs from an image
that does not record it: the background and noise level
(`robust_noise`) and the width of the point-spread function
(`measure_psf_sigma`).
"""

from __future__ import annotations

__all__ = ("FitsImage", "measure_psf_sigma", "read_fits_image", "robust_noise")

import dataclasses
import logging
import math
import os
import re
import warnings

import numpy as np
import scipy.ndimage
import scipy.optimize
import scipy.spatial
import scipy.special
from astropy.io import fits
from astropy.wcs import WCS

from ..simulation.stack_detection import pixel_gaussian_1d
from ..tiles.normalization import robust_stats

_LOG = logging.getLogger(__name__)

# Mask planes (afw names, and the lsst.images renamings) whose pixels hold
# no usable data.
_BAD_PLANES = ("NO_DATA", "BAD", "SAT", "SATURATED", "CR", "COSMIC_RAY", "EDGE", "DETECTION_EDGE", "SUSPECT")
_SAT_PLANES = ("SAT", "SATURATED")

# Pixels sampled by robust_noise.
_NOISE_SAMPLE = 500_000

# EXTNAMEs of the auxiliary planes of plain files, by meaning.
_VARIANCE_NAMES = ("VARIANCE", "VAR")
_WEIGHT_NAMES = ("WEIGHT", "WHT", "IVAR", "INVVAR")
_ERROR_NAMES = ("ERR", "ERROR", "SIGMA", "STDDEV")
_MASK_NAMES = ("MASK", "DQ", "BPM")
_AUX_NAMES = _VARIANCE_NAMES + _WEIGHT_NAMES + _ERROR_NAMES + _MASK_NAMES

# Primary-header cards not merged into the returned image header:
# structure, and anything describing a WCS (the primary HDU of a
# multi-extension file may carry one for a different array).
_NO_MERGE = re.compile(
    r"^(SIMPLE|BITPIX|NAXIS\d*|EXTEND|XTENSION|PCOUNT|GCOUNT|EXTNAME|EXTVER|EXTTYPE|INHERIT|BSCALE|BZERO"
    r"|BLANK|CHECKSUM|DATASUM|COMMENT|HISTORY|WCSAXES\w?|WCSNAME\w?|CTYPE\d\w?|CRPIX\d\w?|CRVAL\d\w?"
    r"|CDELT\d\w?|CUNIT\d\w?|CROTA\d\w?|CD\d_\d\w?|PC\d_\d\w?|PV\d_\d+\w?|PS\d_\d+\w?|RADESYS\w?|RADECSYS"
    r"|EQUINOX\w?|EPOCH|LONPOLE\w?|LATPOLE\w?|[AB]P?_\d+_\d+|[AB]P?_ORDER|[AB]P?_DMAX|LTV\d|LTM\d_\d)$"
)


@dataclasses.dataclass
class FitsImage:
    """An image read from a FITS file, as plain arrays and metadata.

    Attributes
    ----------
    image : `numpy.ndarray`
        Science pixels, float32, shape ``(rows, columns)``. Bad pixels keep
        the values in the file (possibly NaN).
    variance : `numpy.ndarray` or `None`
        Per-pixel variance, float32, same shape; `None` when the file has
        none.
    bad : `numpy.ndarray`
        Boolean, same shape: pixels with no usable data (non-finite image
        values; ``NO_DATA``, ``BAD``, ``SAT``, ``CR``, ``EDGE`` or
        ``SUSPECT`` mask bits, or any nonzero value of a generic mask;
        non-positive or non-finite variance).
    saturated : `numpy.ndarray`
        Boolean, same shape: saturated pixels (the ``SAT`` mask plane when
        present, else all `False`).
    wcs : `astropy.wcs.WCS` or `None`
        Celestial WCS of the array (0-based pixel indices, x = column,
        y = row), or `None` when the header has no usable one.
    psf_sigma : `float` or `None`
        Gaussian PSF sigma in pixels when the file records it, else `None`.
    header : `astropy.io.fits.Header`
        Header of the image HDU; cards of the primary header that it lacks
        (except structural and WCS cards) are appended.
    source : `str`
        File path and HDU, for messages.
    kind : `str`
        ``"lsst_calexp"`` or ``"plain"``.
    """

    image: np.ndarray
    variance: np.ndarray | None
    bad: np.ndarray
    saturated: np.ndarray
    wcs: WCS | None
    psf_sigma: float | None
    header: fits.Header
    source: str
    kind: str

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the image, ``(rows, columns)``."""
        return self.image.shape


def read_fits_image(path: str | os.PathLike, hdu: int | str | None = None) -> FitsImage:
    """Read a FITS image and its companion planes.

    Parameters
    ----------
    path : `str` or `os.PathLike`
        The FITS file.
    hdu : `int` or `str`, optional
        Index or ``EXTNAME`` of the image HDU. By default the ``IMAGE`` HDU
        of an LSST Exposure file, else the first HDU with 2-D image data.

    Returns
    -------
    image : `FitsImage`
        The pixels, bad-pixel masks, WCS and metadata.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file cannot be read as FITS, has no 2-D numeric image, the
        image is empty or entirely non-finite, or a companion plane does not
        match the image shape. The message names the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file.")
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not a FITS file.")
    try:
        hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
    except Exception as exc:
        raise ValueError(f"{path}: cannot be read as a FITS file ({exc}).") from exc
    with hdul:
        try:
            return _read(path, hdul, hdu)
        except (ValueError, FileNotFoundError):
            raise
        except Exception as exc:
            raise ValueError(
                f"{path}: cannot be read as a FITS image ({type(exc).__name__}: {exc})."
            ) from exc


def _read(path: str, hdul: fits.HDUList, hdu: int | str | None) -> FitsImage:
    if len(hdul) == 0:
        raise ValueError(f"{path}: contains no HDUs.")
    layout = _lsst_layout(hdul)
    if hdu is not None:
        index = _resolve_hdu(path, hdul, hdu)
        if layout is not None and index != layout["IMAGE"]:
            layout = None
    elif layout is not None:
        index = layout["IMAGE"]
    else:
        index = _first_image_hdu(path, hdul)
    image_hdu = hdul[index]
    source = _describe(path, index, image_hdu)
    image = _image_array(source, image_hdu)

    if layout is not None:
        kind = "lsst_calexp"
        aux = {name: layout.get(name) for name in ("VARIANCE", "MASK")}
        variance = None
        mask_index = aux["MASK"]
        if aux["VARIANCE"] is not None:
            variance = _plane_array(source, hdul, aux["VARIANCE"], image.shape, "variance")
    else:
        kind = "plain"
        aux = _plain_aux(hdul, index)
        variance = None
        mask_index = aux.get("mask")
        if "variance" in aux:
            variance = _plane_array(source, hdul, aux["variance"], image.shape, "variance")
        elif "weight" in aux:
            weight = _plane_array(source, hdul, aux["weight"], image.shape, "weight")
            with np.errstate(divide="ignore", invalid="ignore"):
                variance = np.where(weight > 0, 1.0 / weight, np.inf).astype(np.float32)
        elif "error" in aux:
            error = _plane_array(source, hdul, aux["error"], image.shape, "error")
            variance = np.where(np.isfinite(error) & (error > 0), np.square(error), np.inf).astype(np.float32)

    bad = ~np.isfinite(image)
    if bad.all():
        raise ValueError(f"{source}: has no finite pixels.")
    saturated = np.zeros(image.shape, dtype=bool)
    if mask_index is not None:
        mask_hdu = hdul[mask_index]
        mask = mask_hdu.data
        if mask is None or mask.shape != image.shape:
            shape = None if mask is None else mask.shape
            raise ValueError(
                f"{source}: mask HDU {_describe_hdu(mask_index, mask_hdu)} has shape {shape}, "
                f"image has {image.shape}."
            )
        if mask.dtype.kind not in "biu":
            mask = np.where(np.isfinite(mask), mask, 1).astype(np.int64)
        mask_bad, saturated = _interpret_mask(np.asarray(mask), mask_hdu.header)
        bad |= mask_bad
    if variance is not None:
        bad |= ~(np.isfinite(variance) & (variance > 0))

    wcs = _celestial_wcs(image_hdu.header, image.shape)
    psf_sigma = _archive_psf_sigma(hdul) if kind == "lsst_calexp" else None
    header = _merged_header(hdul, index)
    return FitsImage(
        image=image,
        variance=variance,
        bad=bad,
        saturated=saturated,
        wcs=wcs,
        psf_sigma=psf_sigma,
        header=header,
        source=source,
        kind=kind,
    )


def _extname(hdu: fits.hdu.base.ExtensionHDU) -> str:
    return str(hdu.header.get("EXTNAME", "") or "").strip().upper()


def _extver(hdu: fits.hdu.base.ExtensionHDU) -> int:
    try:
        return int(hdu.header.get("EXTVER", 1))
    except (TypeError, ValueError):
        return 1


def _describe_hdu(index: int, hdu: fits.hdu.base.ExtensionHDU) -> str:
    name = _extname(hdu)
    return f"{index} ({name})" if name else str(index)


def _describe(path: str, index: int, hdu: fits.hdu.base.ExtensionHDU) -> str:
    name = _extname(hdu)
    return f"{path}[{index}{', ' + name if name else ''}]"


def _is_image_hdu(hdu: fits.hdu.base.ExtensionHDU) -> bool:
    return isinstance(hdu, fits.PrimaryHDU | fits.ImageHDU | fits.CompImageHDU)


def _hdu_shape(hdu: fits.hdu.base.ExtensionHDU) -> tuple[int, ...]:
    """Shape of an image HDU from its header (numpy order), without
    reading the data.
    """
    header = hdu.header
    naxis = int(header.get("NAXIS", 0) or 0)
    return tuple(int(header.get(f"NAXIS{i}", 0) or 0) for i in range(naxis, 0, -1))


def _squeezed_ndim(shape: tuple[int, ...]) -> int:
    """Number of axes once leading length-1 axes are dropped."""
    dims = list(shape)
    while len(dims) > 2 and dims[0] == 1:
        dims.pop(0)
    return len(dims)


def _lsst_layout(hdul: fits.HDUList) -> dict[str, int] | None:
    """Indices of the IMAGE, MASK and VARIANCE HDUs of an afw Exposure
    file, or `None` when the file does not have that layout.
    """
    found: dict[str, int] = {}
    for index, hdu in enumerate(hdul):
        if not _is_image_hdu(hdu):
            continue
        name = _extname(hdu) or str(hdu.header.get("EXTTYPE", "") or "").strip().upper()
        if name in ("IMAGE", "MASK", "VARIANCE") and name not in found:
            found[name] = index
    if "IMAGE" in found and ("MASK" in found or "VARIANCE" in found):
        return found
    return None


def _resolve_hdu(path: str, hdul: fits.HDUList, hdu: int | str) -> int:
    """Index of the HDU given by number or EXTNAME."""
    names = ", ".join(_describe_hdu(i, h) for i, h in enumerate(hdul))
    if isinstance(hdu, int | np.integer):
        if not 0 <= int(hdu) < len(hdul):
            raise ValueError(f"{path}: has no HDU {hdu} (HDUs: {names}).")
        return int(hdu)
    try:
        return hdul.index_of(hdu)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"{path}: has no HDU named {hdu!r} (HDUs: {names}).") from exc


def _first_image_hdu(path: str, hdul: fits.HDUList) -> int:
    """Index of the first HDU holding 2-D image data that is not an
    auxiliary (variance, weight, mask) plane.
    """
    seen = []
    fallback = None
    for index, hdu in enumerate(hdul):
        if not _is_image_hdu(hdu):
            seen.append(f"HDU {_describe_hdu(index, hdu)} is a {type(hdu).__name__}")
            continue
        shape = _hdu_shape(hdu)
        if not shape or 0 in shape:
            seen.append(f"HDU {_describe_hdu(index, hdu)} has no data")
            continue
        ndim = _squeezed_ndim(shape)
        if ndim != 2:
            seen.append(f"HDU {_describe_hdu(index, hdu)} has {len(shape)}-D data of shape {shape}")
            continue
        if _extname(hdu) in _AUX_NAMES:
            fallback = index if fallback is None else fallback
            continue
        return index
    if fallback is not None:
        return fallback
    raise ValueError(f"{path}: no HDU with 2-D image data ({'; '.join(seen)}).")


def _image_array(source: str, hdu: fits.hdu.base.ExtensionHDU) -> np.ndarray:
    """The image of an HDU as a native float32 2-D array."""
    if not _is_image_hdu(hdu):
        raise ValueError(f"{source}: is a {type(hdu).__name__}, not an image.")
    data = hdu.data
    if data is None or data.size == 0:
        raise ValueError(f"{source}: has no image data.")
    if data.dtype.kind not in "biuf":
        raise ValueError(f"{source}: has non-numeric data of type {data.dtype}.")
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 2:
        raise ValueError(f"{source}: has {data.ndim}-D data of shape {data.shape}; a 2-D image is needed.")
    return np.ascontiguousarray(data, dtype=np.float32)


def _plane_array(
    source: str, hdul: fits.HDUList, index: int, shape: tuple[int, ...], what: str
) -> np.ndarray:
    """A companion plane as float32, checked against the image shape."""
    hdu = hdul[index]
    data = hdu.data if _is_image_hdu(hdu) else None
    if data is None or data.dtype.kind not in "biuf":
        raise ValueError(f"{source}: {what} HDU {_describe_hdu(index, hdu)} holds no numeric image.")
    while data.ndim > 2 and data.shape[0] == 1:
        data = data[0]
    if data.shape != tuple(shape):
        raise ValueError(
            f"{source}: {what} HDU {_describe_hdu(index, hdu)} has shape {data.shape}, "
            f"image has {tuple(shape)}."
        )
    return np.ascontiguousarray(data, dtype=np.float32)


def _plain_aux(hdul: fits.HDUList, image_index: int) -> dict[str, int]:
    """Indices of the variance, weight, error and mask planes of a plain
    file, preferring those with the image's ``EXTVER``.
    """
    version = _extver(hdul[image_index])
    candidates: dict[str, list[tuple[int, int]]] = {}
    for index, hdu in enumerate(hdul):
        if index == image_index or not _is_image_hdu(hdu):
            continue
        name = _extname(hdu)
        for role, names in (
            ("variance", _VARIANCE_NAMES),
            ("weight", _WEIGHT_NAMES),
            ("error", _ERROR_NAMES),
            ("mask", _MASK_NAMES),
        ):
            if name in names:
                # Rank: same EXTVER first, then file order.
                candidates.setdefault(role, []).append((0 if _extver(hdu) == version else 1, index))
    return {role: min(found)[1] for role, found in candidates.items()}


def _mask_planes(header: fits.Header) -> dict[str, int]:
    """Plane name to bit index, from the ``MP_<NAME>`` cards."""
    planes = {}
    for key in header:
        if key.startswith("MP_"):
            try:
                bit = int(header[key])
            except (TypeError, ValueError):
                continue
            if 0 <= bit < 64:
                planes[key[3:]] = bit
    return planes


def _interpret_mask(mask: np.ndarray, header: fits.Header) -> tuple[np.ndarray, np.ndarray]:
    """Bad and saturated pixels of a mask plane.

    With ``MP_<NAME>`` cards the named bad planes are used; otherwise any
    nonzero value is bad and nothing is known to be saturated.
    """
    planes = _mask_planes(header)
    if not planes:
        return mask != 0, np.zeros(mask.shape, dtype=bool)
    # int64 keeps bit 31 of an int32 mask (negative values) intact.
    values = mask.astype(np.int64, copy=False)
    bad_bits = sum(1 << planes[name] for name in set(_BAD_PLANES) if name in planes)
    sat_bits = sum(1 << planes[name] for name in set(_SAT_PLANES) if name in planes)
    bad = (values & bad_bits) != 0
    saturated = (values & sat_bits) != 0
    return bad, saturated


def _celestial_wcs(header: fits.Header, shape: tuple[int, int]) -> WCS | None:
    """The celestial WCS of an image header, or `None` if it has no
    usable one.
    """
    if not any(str(key).startswith("CTYPE") for key in header):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header)
            if not wcs.has_celestial:
                return None
            if wcs.naxis != 2 or (wcs.wcs.lng, wcs.wcs.lat) != (0, 1):
                wcs = wcs.celestial
            rows, cols = shape
            world = wcs.all_pix2world(np.array([[(cols - 1) / 2, (rows - 1) / 2], [0.0, 0.0]]), 0)
    except Exception as exc:  # A malformed WCS is not fatal: we just do not use it.
        _LOG.debug("Ignoring unusable WCS: %s", exc)
        return None
    if not np.all(np.isfinite(world)):
        return None
    return wcs


def _merged_header(hdul: fits.HDUList, index: int) -> fits.Header:
    """The image header, with primary-header cards appended that it lacks."""
    header = hdul[index].header.copy()
    if index != 0:
        for card in hdul[0].header.cards:
            key = card.keyword
            if not key or _NO_MERGE.match(key) or key in header:
                continue
            try:
                header.append(card.copy() if hasattr(card, "copy") else card, end=True)
            except Exception:  # Oddly formatted cards are not worth failing for.
                continue
    return header


def _archive_psf_sigma(hdul: fits.HDUList) -> float | None:
    """Gaussian PSF sigma recorded in an afw archive, or `None`.

    The ``GaussianPsf`` archive table is read when the exposure's PSF is
    one. Otherwise the ``psfSigma`` of the exposure summary statistics is
    used when those statistics were measured (``nPsfStar > 0``).
    """
    try:
        primary = hdul[0].header
        index_table, data_hdus = _archive_tables(hdul)
        psf_id = primary.get("ARCHIVE_ID_PSF", primary.get("PSF_ID"))
        sigma = None
        if index_table is not None and psf_id is not None:
            row = _archive_row(index_table, data_hdus, int(psf_id), "GaussianPsf")
            if row is not None and "sigma" in row.array.names:
                sigma = float(row["sigma"])
        elif index_table is None:
            for hdu in hdul:
                if _extname(hdu) == "GAUSSIANPSF" and isinstance(hdu, fits.BinTableHDU):
                    if hdu.data is not None and len(hdu.data) == 1 and "sigma" in hdu.columns.names:
                        sigma = float(hdu.data["sigma"][0])
        if sigma is not None and math.isfinite(sigma) and sigma > 0:
            return sigma
        stats_id = primary.get("ARCHIVE_ID_SUMMARY_STATS", primary.get("SUMMARY_STATS_ID"))
        if index_table is not None and stats_id is not None:
            row = _archive_row(index_table, data_hdus, int(stats_id), "ExposureSummaryStats")
            if row is not None and "bytes" in row.array.names:
                import yaml

                stats = yaml.safe_load(bytes(np.asarray(row["bytes"], dtype=np.uint8)))
                sigma = float(stats.get("psfSigma", math.nan))
                if int(stats.get("nPsfStar", 0) or 0) > 0 and math.isfinite(sigma) and sigma > 0:
                    return sigma
    except Exception as exc:  # The archive is optional metadata; never fail the read for it.
        _LOG.debug("Could not read the PSF from the afw archive: %s", exc)
    return None


def _archive_tables(hdul: fits.HDUList) -> tuple[fits.FITS_rec | None, dict[int, fits.BinTableHDU]]:
    """The afw archive index table and the archive catalogs by number."""
    index_table = None
    data_hdus = {}
    for hdu in hdul:
        if not isinstance(hdu, fits.BinTableHDU):
            continue
        exttype = str(hdu.header.get("EXTTYPE", "")).strip().upper()
        if exttype == "ARCHIVE_INDEX" or (not exttype and _extname(hdu) == "ARCHIVE_INDEX"):
            index_table = hdu.data
        elif exttype == "ARCHIVE_DATA" and "AR_CATN" in hdu.header:
            data_hdus[int(hdu.header["AR_CATN"])] = hdu
    return index_table, data_hdus


def _archive_row(
    index_table: fits.FITS_rec, data_hdus: dict[int, fits.BinTableHDU], object_id: int, name: str
) -> fits.FITS_record | None:
    """The archive row of object ``object_id`` if it is a ``name``."""
    rows = index_table[index_table["id"] == object_id]
    if len(rows) == 0:
        return None
    entry = rows[0]
    if str(entry["name"]).strip() != name:
        return None
    hdu = data_hdus.get(int(entry["cat.archive"]))
    if hdu is None or hdu.data is None or not 0 <= int(entry["row0"]) < len(hdu.data):
        return None
    return hdu.data[int(entry["row0"])]


def robust_noise(image: np.ndarray, bad: np.ndarray | None = None) -> tuple[float, float]:
    """Background level and noise of an image.

    Parameters
    ----------
    image : `numpy.ndarray`
        The image.
    bad : `numpy.ndarray`, optional
        Boolean mask of pixels to leave out; non-finite pixels are always
        left out.

    Returns
    -------
    background : `float`
        Sigma-clipped median.
    sigma : `float`
        ``1.4826 * MAD`` of the clipped pixels (the standard deviation of
        the clipped pixels when the MAD is zero, as in quantized images).

    Raises
    ------
    ValueError
        If there are too few usable pixels.

    Notes
    -----
    Large images are subsampled on a regular grid to about half a
    million pixels; the statistical error of the noise estimate is then
    about 0.15%, well below its variation across a real image.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"robust_noise needs a 2-D image, not shape {image.shape}.")
    step = max(1, int(math.ceil(math.sqrt(image.size / _NOISE_SAMPLE))))
    sample = image[::step, ::step]
    good = np.isfinite(sample)
    if bad is not None:
        bad = np.asarray(bad, dtype=bool)
        if bad.shape != image.shape:
            raise ValueError(f"bad mask shape {bad.shape} does not match image shape {image.shape}.")
        good &= ~bad[::step, ::step]
    values = sample[good]
    if values.size < 10:
        raise ValueError(f"only {values.size} usable pixels to estimate the noise from.")
    background, sigma = robust_stats(values)
    if not sigma > 0:
        values = values.astype(np.float64)
        centred = values - background
        scale = float(np.std(centred))
        if scale > 0:
            kept = centred[np.abs(centred) <= 5 * scale]
            sigma = float(np.std(kept)) if kept.size > 1 else scale
        else:
            sigma = 0.0
    return float(background), float(sigma)


def measure_psf_sigma(
    image: np.ndarray,
    bad: np.ndarray | None = None,
    *,
    background: float | None = None,
    noise: float | None = None,
    min_snr: float = 20.0,
    max_stars: int = 200,
) -> float:
    """Measure the Gaussian sigma of the point-spread function from stars.

    Parameters
    ----------
    image : `numpy.ndarray`
        The image (2-D).
    bad : `numpy.ndarray`, optional
        Boolean mask of unusable pixels (including saturated ones). Stars
        with a bad pixel near their peak are not used; other bad pixels
        are left out of the fits.
    background, noise : `float`, optional
        Background level and per-pixel noise; measured with `robust_noise`
        when not given.
    min_snr : `float`, optional
        Smallest peak signal-to-noise ratio (fitted peak over ``noise``) of
        a star used.
    max_stars : `int`, optional
        Number of the brightest good stars whose median width is returned.

    Returns
    -------
    sigma : `float`
        Median Gaussian sigma in pixels of the pixel-integrated circular
        Gaussian fits.

    Raises
    ------
    ValueError
        If fewer than 3 usable stars are found.

    Notes
    -----
    Candidates are local maxima of the image smoothed by a Gaussian of
    sigma 1 px, above background by a fraction of ``min_snr`` times the
    noise, with no other significant peak within a cutout radius. A circular
    pixel-integrated Gaussian plus constant background is fitted to a
    cutout around each, brightest first. Fits are rejected when the sigma is
    below 0.5 px (cosmic rays, hot pixels), the peak is below ``min_snr``,
    the residuals exceed the noise plus 10% of the peak (saturated or
    blended objects), the object is elongated (weighted second moments), or
    the centre wanders off the peak. Of the good fits, the densest cluster
    of widths is taken as the stars (galaxies scatter to larger widths;
    anything above three times the median is dropped in any case), and is
    3-sigma clipped before the median is taken. The cutout grows with the median
    width when the PSF turns out to be wide.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"measure_psf_sigma needs a 2-D image, not shape {image.shape}.")
    usable = np.isfinite(image)
    if bad is not None:
        bad = np.asarray(bad, dtype=bool)
        if bad.shape != image.shape:
            raise ValueError(f"bad mask shape {bad.shape} does not match image shape {image.shape}.")
        usable &= ~bad
    if background is None or noise is None:
        est_background, est_noise = robust_noise(image, ~usable)
        background = est_background if background is None else background
        noise = est_noise if noise is None else noise
    background = float(background)
    noise = float(noise)
    if not math.isfinite(noise) or not math.isfinite(background):
        raise ValueError("measure_psf_sigma: background and noise must be finite.")
    if noise <= 0:
        scale = float(np.max(np.abs(image[usable] - background))) if usable.any() else 0.0
        noise = max(scale * 1e-6, np.finfo(np.float32).tiny)

    data = np.where(usable, image, background).astype(np.float32) - np.float32(background)
    smooth = scipy.ndimage.gaussian_filter(data, 1.0, truncate=3.0)
    # Noise of the smoothed image, measured (the image noise may be
    # correlated).
    _, smooth_noise = robust_noise(smooth, ~usable)
    if not smooth_noise > 0:
        smooth_noise = noise * 0.28
    # A Gaussian star of sigma s keeps s^2/(s^2+1) of its peak after
    # smoothing: at least 0.39 for s >= 0.8 px.
    candidate_threshold = max(0.35 * min_snr * noise, 5 * smooth_noise)
    neighbour_threshold = 5 * smooth_noise
    peaks_all = _local_maxima(smooth, neighbour_threshold)
    heights_all = smooth[peaks_all[:, 0], peaks_all[:, 1]]
    order = np.argsort(-heights_all, kind="stable")
    peaks_all = peaks_all[order]
    heights_all = heights_all[order]
    is_candidate = heights_all >= candidate_threshold
    # Isolation needs the neighbours, found once.
    tree = scipy.spatial.cKDTree(peaks_all) if len(peaks_all) else None

    half_width = 7
    sigmas = np.empty(0)
    for _ in range(3):
        sigmas = _fit_candidates(
            data,
            usable,
            peaks_all,
            heights_all,
            is_candidate,
            tree,
            half_width=half_width,
            noise=noise,
            min_snr=min_snr,
            max_stars=max_stars,
        )
        good = _select_stellar(sigmas)
        if good.size < 3:
            break
        wanted = min(max(7, int(math.ceil(3.5 * float(np.median(good))))), 40)
        if wanted <= half_width:
            break
        half_width = wanted
    good = _select_stellar(sigmas)
    if good.size < 3:
        raise ValueError(
            f"measure_psf_sigma found only {good.size} stars usable for a PSF fit "
            f"(isolated, unsaturated, point-like, peak S/N >= {min_snr:g}); at least 3 are needed."
        )
    return float(np.median(good))


def _local_maxima(smooth: np.ndarray, threshold: float, radius: int = 2) -> np.ndarray:
    """``(row, col)`` of the local maxima of ``smooth`` above ``threshold``.

    A pixel is a maximum when no pixel within a ``(2 radius + 1)`` square
    around it is higher (ties are kept). Equivalent to comparing with
    `scipy.ndimage.maximum_filter`, but only evaluated at the pixels above
    threshold, which is much faster on large, mostly empty images.
    """
    rows, cols = np.nonzero(smooth > threshold)
    if rows.size == 0:
        return np.empty((0, 2), dtype=np.intp)
    nrows, ncols = smooth.shape
    values = smooth[rows, cols]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            if (dy == 0 and dx == 0) or rows.size == 0:
                continue
            neighbour = smooth[np.clip(rows + dy, 0, nrows - 1), np.clip(cols + dx, 0, ncols - 1)]
            keep = values >= neighbour
            rows, cols, values = rows[keep], cols[keep], values[keep]
    return np.column_stack([rows, cols])


def _select_stellar(sigmas: np.ndarray) -> np.ndarray:
    """Widths of the stars among the fitted widths.

    Stars share one width (to within the PSF variation over the image);
    galaxies scatter to larger widths. The densest cluster of widths (the
    most widths within 15% of one value, the smaller value on ties) is
    taken as the stellar one; widths outside 0.7-1.3 times its centre and
    above three times the overall median are dropped, then the rest are
    3-sigma clipped.
    """
    sigmas = np.sort(np.asarray(sigmas, dtype=float))
    if sigmas.size < 3:
        return sigmas
    sigmas = sigmas[sigmas <= 3 * np.median(sigmas)]
    logs = np.log(sigmas)
    window = math.log(1.15)
    counts = np.searchsorted(logs, logs + window, side="right") - np.searchsorted(logs, logs - window)
    centre = float(np.median(sigmas[np.abs(logs - logs[int(np.argmax(counts))]) <= window]))
    sigmas = sigmas[(sigmas >= 0.7 * centre) & (sigmas <= 1.3 * centre)]
    for _ in range(5):
        if sigmas.size < 3:
            break
        median = np.median(sigmas)
        spread = max(1.4826 * np.median(np.abs(sigmas - median)), 0.02 * median)
        keep = np.abs(sigmas - median) <= 3 * spread
        if keep.all():
            break
        sigmas = sigmas[keep]
    return sigmas


def _fit_candidates(
    data: np.ndarray,
    usable: np.ndarray,
    peaks: np.ndarray,
    heights: np.ndarray,
    is_candidate: np.ndarray,
    tree: scipy.spatial.cKDTree | None,
    *,
    half_width: int,
    noise: float,
    min_snr: float,
    max_stars: int,
) -> np.ndarray:
    """Fit the brightest isolated candidates; return the good widths."""
    nrows, ncols = data.shape
    sigmas: list[float] = []
    attempts = 0
    max_attempts = 4 * max_stars + 100
    edge = 3
    for i in np.flatnonzero(is_candidate):
        if len(sigmas) >= max_stars or attempts >= max_attempts:
            break
        row, col = (int(v) for v in peaks[i])
        if row < edge or col < edge or row >= nrows - edge or col >= ncols - edge:
            continue
        # Isolation: no other significant peak (bar ties next to the peak)
        # within the cutout radius.
        neighbours = tree.query_ball_point(peaks[i], r=half_width * math.sqrt(2))
        crowded = False
        for j in neighbours:
            if j == i:
                continue
            d2 = float(np.sum((peaks[j] - peaks[i]) ** 2))
            if d2 > 4:
                crowded = True
                break
        if crowded:
            continue
        r0, r1 = max(row - half_width, 0), min(row + half_width + 1, nrows)
        c0, c1 = max(col - half_width, 0), min(col + half_width + 1, ncols)
        cut = data[r0:r1, c0:c1].astype(np.float64)
        weight = usable[r0:r1, c0:c1]
        core = weight[max(row - 2 - r0, 0) : row + 3 - r0, max(col - 2 - c0, 0) : col + 3 - c0]
        if not core.all() or weight.mean() < 0.7:
            continue
        # A flat top of identical values is a saturated star.
        if np.count_nonzero(cut[weight] == np.max(cut[weight])) >= 3:
            continue
        attempts += 1
        result = _fit_gaussian(cut, weight, row - r0, col - c0, heights[i])
        if result is None:
            continue
        flux, y0, x0, sigma, sky, rms = result
        if not (0.5 <= sigma <= half_width):
            continue
        if abs(y0 - (row - r0)) > 1.5 or abs(x0 - (col - c0)) > 1.5:
            continue
        peak = flux * float(pixel_gaussian_1d(np.zeros(1), sigma)[0]) ** 2
        if peak < min_snr * noise:
            continue
        if rms**2 > (1.3 * noise) ** 2 + (0.1 * peak) ** 2:
            continue
        if _ellipticity(cut - sky, weight, y0, x0, sigma) > 0.3:
            continue
        sigmas.append(sigma)
    return np.asarray(sigmas)


_SQRT2 = math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gaussian_1d(coords: np.ndarray, centre: float, sigma: float) -> tuple[np.ndarray, ...]:
    """Pixel-integrated unit Gaussian along one axis and its derivatives
    with respect to the centre and the sigma.
    """
    up = (coords + 0.5 - centre) / sigma
    lo = (coords - 0.5 - centre) / sigma
    value = 0.5 * (scipy.special.erf(up / _SQRT2) - scipy.special.erf(lo / _SQRT2))
    pdf_up = _INV_SQRT2PI * np.exp(-0.5 * up * up)
    pdf_lo = _INV_SQRT2PI * np.exp(-0.5 * lo * lo)
    d_centre = -(pdf_up - pdf_lo) / sigma
    d_sigma = -(up * pdf_up - lo * pdf_lo) / sigma
    return value, d_centre, d_sigma


def _fit_gaussian(
    cut: np.ndarray, weight: np.ndarray, row: int, col: int, height: float
) -> tuple[float, float, float, float, float, float] | None:
    """Least-squares fit of a pixel-integrated circular Gaussian plus a
    constant.

    Returns ``(flux, y0, x0, sigma, sky, rms)`` in cutout coordinates, or
    `None` when the fit fails.
    """
    ny, nx = cut.shape
    ys = np.arange(ny, dtype=np.float64)
    xs = np.arange(nx, dtype=np.float64)
    w = weight.astype(np.float64)
    n_good = int(w.sum())
    if n_good < 12:
        return None
    border = np.ones_like(weight)
    border[1:-1, 1:-1] = False
    border &= weight
    sky0 = float(np.median(cut[border])) if border.any() else 0.0
    peak0 = max(float(cut[row, col]) - sky0, float(height), 1e-30)
    # Width guess from the area above half maximum.
    half = np.count_nonzero((cut - sky0 > 0.5 * peak0) & weight)
    sigma0 = min(max(math.sqrt(max(half, 1) / math.pi) / 1.1774, 0.7), 0.4 * max(ny, nx))
    flux0 = peak0 * 2 * math.pi * sigma0**2
    start = np.array([flux0, float(row), float(col), sigma0, sky0])

    def residuals(p: np.ndarray) -> np.ndarray:
        gy, _, _ = _gaussian_1d(ys, p[1], abs(p[3]))
        gx, _, _ = _gaussian_1d(xs, p[2], abs(p[3]))
        model = p[0] * np.outer(gy, gx) + p[4]
        return ((model - cut) * w).ravel()

    def jacobian(p: np.ndarray) -> np.ndarray:
        sigma = abs(p[3])
        sign = 1.0 if p[3] >= 0 else -1.0
        gy, dy_c, dy_s = _gaussian_1d(ys, p[1], sigma)
        gx, dx_c, dx_s = _gaussian_1d(xs, p[2], sigma)
        jac = np.empty((ny * nx, 5))
        jac[:, 0] = (np.outer(gy, gx) * w).ravel()
        jac[:, 1] = (p[0] * np.outer(dy_c, gx) * w).ravel()
        jac[:, 2] = (p[0] * np.outer(gy, dx_c) * w).ravel()
        jac[:, 3] = (sign * p[0] * (np.outer(dy_s, gx) + np.outer(gy, dx_s)) * w).ravel()
        jac[:, 4] = w.ravel()
        return jac

    scale = np.array([abs(flux0), 1.0, 1.0, 1.0, max(abs(peak0) * 0.1, 1e-30)])
    try:
        fit = scipy.optimize.least_squares(
            residuals, start, jac=jacobian, method="lm", x_scale=scale, max_nfev=200
        )
    except Exception:  # Degenerate cutouts: treat as a failed fit.
        return None
    if not fit.success and fit.status <= 0:
        return None
    flux, y0, x0, sigma, sky = fit.x
    sigma = abs(sigma)
    if not np.all(np.isfinite(fit.x)) or flux <= 0:
        return None
    dof = max(n_good - 5, 1)
    rms = math.sqrt(float(np.sum(fit.fun**2)) / dof)
    return float(flux), float(y0), float(x0), float(sigma), float(sky), rms


def _ellipticity(cut: np.ndarray, weight: np.ndarray, y0: float, x0: float, sigma: float) -> float:
    """Ellipticity ``|e|`` from Gaussian-weighted second moments."""
    ny, nx = cut.shape
    dy = np.arange(ny, dtype=np.float64)[:, None] - y0
    dx = np.arange(nx, dtype=np.float64)[None, :] - x0
    kernel = np.exp(-0.5 * (dx * dx + dy * dy) / sigma**2) * weight
    f = cut * kernel
    total = float(f.sum())
    if total <= 0:
        return 1.0
    ixx = float((f * dx * dx).sum()) / total
    iyy = float((f * dy * dy).sum()) / total
    ixy = float((f * dx * dy).sum()) / total
    trace = ixx + iyy
    if trace <= 0:
        return 1.0
    return math.hypot(ixx - iyy, 2 * ixy) / trace
