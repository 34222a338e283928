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

"""Gaia DR3 star catalogs for the embedded survey.

Four ways to a star catalog, all returning the same normalized
`astropy.table.Table` (columns `STAR_COLUMNS`, ICRS degrees, epoch 2016.0):

- `fetch_gaia_cone`: an ADQL cone search of ``gaiadr3.gaia_source`` through
  astroquery, split into chunks, retried on network errors and cached on
  disk;
- `read_star_catalog`: a local FITS, ECSV, Parquet or CSV file, with common
  column aliases;
- `synthetic_gaia_catalog`: an offline Gaia-like catalog drawn from a
  star-count model (`galactic_star_density`) calibrated on real Gaia DR3
  rows;
- `ingest_star_catalog`: the catalog sharded by HTM trixel into a Butler
  repository as ``gaia_dr3_stars`` (storage class ``ArrowAstropy``).

astroquery is imported lazily: importing ``astroquery.gaia`` contacts the
archive, so it happens only when a query is really needed.

Star-count model
----------------
The density of stars per deg^2 brighter than G is modelled as a product of
a sky pattern S(l, b) and a magnitude distribution,

    n(<G; l, b) = A S(l, b) F(G) / [F(21) - F(11.5)],

with F the cumulative of dN/dG, log10 dN/dG = c1 (G - 21) + c2 (G - 21)^2.
S is an exponential disc in |sin b| (scale 0.120) that is concentrated
towards the inner Galaxy (exp[0.933 (cos l - 1)]), a Gaussian bulge
(sigma 7.7 deg in l, 7.1 deg in b, 1.10 times the central disc), a nearly
uniform halo (0.0105 of the central disc, exp[0.193 (cos l cos b - 1)])
and a dust lane that removes up to 76 per cent of the disc and bulge
within |b| < 1.6 deg (Gaussian in b). A normalises the model to 1.485e9
Gaia DR3 sources with 11.5 < G < 21 over the whole sky. Gaia's own
completeness is a logistic in G (50 per cent at G = 20.70, width 0.25 mag)
applied on request (``gaia_selection=True``).

All numbers were fitted by maximum likelihood to the 1000 random all-sky
Gaia DR3 sources of ``shared/fixtures/gaia/gaia_dr3_random_1000.fits``:
the sources with ``random_index`` < 1220 (a random permutation of all
1.8117e9 sources) that pass its cuts (11.5 < G < 21; all have proper
motions), hence 1.8117e9 x 1000 / 1220 = 1.485e9 sources. As Gaia
catalogs them, the model gives about 5000 stars per deg^2 to G = 21 at
the Galactic poles, 9000 at |b| = 30 deg, 45000-110000 at |b| = 5 deg
away from the bulge and several 10^5 towards the bulge (about 20 per cent
more without the completeness cut). That is 2-3 times the rough figures
sometimes quoted for high latitudes (1500 at the poles, 4000 at
|b| = 30 deg), which the fixture rules out: 87 of its 1000 random sources
lie at |b| > 30 deg, a mean of 6300 per deg^2 over that half of the sky.
The magnitude distribution gives 5100 stars brighter than G = 6, 2.9e6
brighter than G = 12 and 3.1e8 brighter than G = 18 over the whole sky,
close to the known Gaia numbers.
"""

from __future__ import annotations

__all__ = (
    "GAIA_DR3_N_SOURCES",
    "STAR_COLUMNS",
    "GaiaQueryError",
    "GaiaUnavailableError",
    "StarCatalogError",
    "fetch_gaia_cone",
    "gaia_completeness",
    "gaia_to_band",
    "galactic_star_density",
    "ingest_star_catalog",
    "read_star_catalog",
    "shard_by_htm7",
    "synthetic_gaia_catalog",
    "write_star_catalog",
)

import contextlib
import functools
import hashlib
import io
import logging
import math
import os
import re
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import astropy.units as u
import numpy as np
from astropy.table import MaskedColumn, Table, vstack

_LOG = logging.getLogger(__name__)

STAR_COLUMNS = ("source_id", "ra", "dec", "phot_g_mean_mag", "bp_rp", "pmra", "pmdec", "parallax")
"""Columns of every star catalog this module returns, in this order."""

GAIA_DR3_N_SOURCES = 1_811_709_771
"""Number of rows of ``gaiadr3.gaia_source``."""

GAIA_TABLE = "gaiadr3.gaia_source"
GAIA_ARCHIVE_HOST = "gea.esac.esa.int"

_UNITS: dict[str, u.UnitBase | None] = {
    "source_id": None,
    "ra": u.deg,
    "dec": u.deg,
    "phot_g_mean_mag": u.mag,
    "bp_rp": u.mag,
    "pmra": u.mas / u.yr,
    "pmdec": u.mas / u.yr,
    "parallax": u.mas,
}
_DESCRIPTIONS = {
    "source_id": "Unique source identifier",
    "ra": "Right ascension (ICRS, epoch 2016.0)",
    "dec": "Declination (ICRS, epoch 2016.0)",
    "phot_g_mean_mag": "Gaia G-band mean magnitude",
    "bp_rp": "Gaia BP - RP colour (NaN where missing)",
    "pmra": "Proper motion in right ascension, times cos(dec)",
    "pmdec": "Proper motion in declination",
    "parallax": "Parallax",
}
# Accepted input names for each column, in order of preference.
_ALIASES: dict[str, tuple[str, ...]] = {
    "source_id": ("source_id", "SOURCE_ID", "Source", "source", "id", "ID", "objectId"),
    "ra": ("ra", "RA", "coord_ra", "RA_ICRS", "RAJ2000", "ra_icrs"),
    "dec": ("dec", "DEC", "Dec", "coord_dec", "DE_ICRS", "DEJ2000", "dec_icrs"),
    "phot_g_mean_mag": ("phot_g_mean_mag", "G", "Gmag", "gmag", "mag"),
    "bp_rp": ("bp_rp", "BP-RP", "BPRP", "bp_rp_color"),
    "pmra": ("pmra", "pmRA", "pm_ra"),
    "pmdec": ("pmdec", "pmDE", "pmDec", "pm_dec"),
    "parallax": ("parallax", "plx", "Plx"),
}
_REQUIRED = ("ra", "dec", "phot_g_mean_mag")
# File formats by extension (longest match first).
_FORMATS = {
    ".fits.gz": "fits",
    ".fits": "fits",
    ".fit": "fits",
    ".fts": "fits",
    ".ecsv": "ascii.ecsv",
    ".parquet": "parquet",
    ".parq": "parquet",
    ".pq": "parquet",
    ".csv": "ascii.csv",
}


class StarCatalogError(ValueError):
    """A star catalog cannot be used: unreadable file, missing columns,
    no rows or bad coordinates. The message names the file.
    """


class GaiaUnavailableError(RuntimeError):
    """The Gaia archive could not be reached or did not answer."""


class GaiaQueryError(RuntimeError):
    """The Gaia archive answered, but rejected the query or its answer
    could not be read.
    """


# ---------------------------------------------------------------------------
# Normalized tables
# ---------------------------------------------------------------------------


def _make_star_table(columns: dict[str, np.ndarray], meta: dict | None = None) -> Table:
    """Build a table with `STAR_COLUMNS`, dtypes, units and descriptions."""
    table = Table(meta=dict(meta or {}))
    for name in STAR_COLUMNS:
        values = columns[name]
        dtype = np.int64 if name == "source_id" else np.float64
        table[name] = np.asarray(values, dtype=dtype)
        table[name].unit = _UNITS[name]
        table[name].description = _DESCRIPTIONS[name]
    return table


def _empty_star_table(meta: dict | None = None) -> Table:
    return _make_star_table({name: np.zeros(0) for name in STAR_COLUMNS}, meta)


def _find_column(table: Table, aliases: Sequence[str]) -> str | None:
    """Return the first alias that names a column of ``table``."""
    for name in aliases:
        if name in table.colnames:
            return name
    lower = {name.lower(): name for name in table.colnames}
    for name in aliases:
        # Case-insensitive matching only for unambiguous (long) names:
        # 'g' must not be mistaken for Gaia 'G'.
        if len(name) > 2 and name.lower() in lower:
            return lower[name.lower()]
    return None


def _column_unit(col: Any) -> u.UnitBase | None:
    unit = getattr(col, "unit", None)
    if unit is None:
        return None
    if isinstance(unit, u.UnrecognizedUnit) or isinstance(unit, str):
        text = str(unit.name if isinstance(unit, u.UnrecognizedUnit) else unit)
        try:
            parsed = u.Unit(text.replace("'", ""), parse_strict="silent")
        except ValueError:
            return None
        return None if isinstance(parsed, u.UnrecognizedUnit) else parsed
    return unit


def _float_values(col: Any) -> np.ndarray:
    """Column values as float64, with masked or null entries as NaN."""
    mask = np.ma.getmaskarray(col) if np.ma.isMaskedArray(col) or isinstance(col, MaskedColumn) else None
    data = np.ma.getdata(col) if mask is not None else np.asarray(col)
    if data.dtype == object:
        values = np.array([np.nan if v is None or v is np.ma.masked else float(v) for v in data], dtype=float)
    else:
        values = np.array(data, dtype=float)
    if mask is not None and mask.any():
        values[np.broadcast_to(mask, values.shape)] = np.nan
    return values


def _converted(table: Table, name: str, key: str, source: str) -> np.ndarray:
    """Values of column ``name`` in the unit of `STAR_COLUMNS` entry
    ``key``.
    """
    col = table[name]
    try:
        values = _float_values(col)
    except (TypeError, ValueError) as exc:
        raise StarCatalogError(f"star catalog {source}: column {name!r} is not numeric ({exc})") from exc
    target = _UNITS[key]
    unit = _column_unit(col)
    if unit is None or target is None or unit == u.dimensionless_unscaled:
        return values
    if target == u.mag:
        if unit == u.mag or isinstance(unit, u.MagUnit) or "mag" in str(unit):
            return values
        raise StarCatalogError(
            f"star catalog {source}: column {name!r} has unit {unit}, but a magnitude was expected"
        )
    try:
        return (values * unit).to_value(target)
    except u.UnitConversionError as exc:
        raise StarCatalogError(
            f"star catalog {source}: column {name!r} has unit {unit}, which does not convert to {target}"
        ) from exc


def _normalize_star_table(table: Any, source: str, *, allow_empty: bool = False) -> Table:
    """Return ``table`` in the normalized schema of `STAR_COLUMNS`.

    Raises `StarCatalogError` (naming ``source``) if a coordinate or
    magnitude column is missing, the table has no rows or a coordinate is
    not finite.
    """
    if not isinstance(table, Table):
        try:
            table = Table(table)
        except Exception as exc:
            raise StarCatalogError(f"star catalog {source} is not a table: {exc}") from exc
    found = {key: _find_column(table, aliases) for key, aliases in _ALIASES.items()}
    missing = [key for key in _REQUIRED if found[key] is None]
    if missing:
        wanted = "; ".join(f"{key}: one of {', '.join(_ALIASES[key])}" for key in missing)
        have = ", ".join(table.colnames) if table.colnames else "none"
        raise StarCatalogError(
            f"star catalog {source} has no usable {'/'.join(missing)} column ({wanted}). "
            f"Columns found: {have}"
        )
    n = len(table)
    if n == 0 and not allow_empty:
        raise StarCatalogError(f"star catalog {source} has no rows")
    columns: dict[str, np.ndarray] = {}
    for key in STAR_COLUMNS:
        if key == "source_id":
            continue
        name = found[key]
        columns[key] = _converted(table, name, key, source) if name is not None else np.full(n, np.nan)
    ra, dec = columns["ra"], columns["dec"]
    bad = ~(np.isfinite(ra) & np.isfinite(dec))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise StarCatalogError(
            f"star catalog {source} has {int(bad.sum())} row(s) with non-finite ra/dec (first at row {first})"
        )
    if n and np.abs(dec).max() > 90.0:
        raise StarCatalogError(
            f"star catalog {source} has declinations outside [-90, 90] deg "
            f"(largest |dec| = {np.abs(dec).max():.6g}); are the units right?"
        )
    columns["ra"] = np.mod(ra, 360.0)
    name = found["source_id"]
    if name is None:
        columns["source_id"] = np.arange(n, dtype=np.int64)
    else:
        col = table[name]
        if np.ma.isMaskedArray(col) and np.ma.getmaskarray(col).any():
            raise StarCatalogError(f"star catalog {source}: column {name!r} has missing values")
        try:
            ids = np.asarray(np.ma.getdata(col))
            as_int = ids.astype(np.int64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise StarCatalogError(f"star catalog {source}: column {name!r} is not an integer id") from exc
        if ids.dtype.kind == "f" and not np.array_equal(as_int, ids):
            raise StarCatalogError(f"star catalog {source}: column {name!r} is not an integer id")
        columns["source_id"] = as_int
    return _make_star_table(columns, dict(table.meta))


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def _table_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(_FORMATS, key=len, reverse=True):
        if name.endswith(suffix):
            return _FORMATS[suffix]
    raise StarCatalogError(
        f"star catalog {path}: unsupported file extension; use one of {', '.join(sorted(_FORMATS))}"
    )


def _read_table(path: Path, fmt: str) -> Table:
    if fmt == "parquet":
        # astropy's Parquet reader needs pandas; daf_butler's conversion
        # (the one behind the ArrowAstropy storage class) needs only
        # pyarrow and keeps astropy units and metadata.
        import pyarrow.parquet as pq

        from lsst.daf.butler.formatters.parquet import arrow_to_astropy

        return arrow_to_astropy(pq.read_table(path))
    return Table.read(path, format=fmt)


def _write_table(table: Table, path: Path, fmt: str, overwrite: bool) -> None:
    if fmt == "parquet":
        import pyarrow.parquet as pq

        from lsst.daf.butler.formatters.parquet import astropy_to_arrow

        pq.write_table(astropy_to_arrow(table), path)
        return
    table.write(path, format=fmt, overwrite=overwrite)


def read_star_catalog(path: str | os.PathLike) -> Table:
    """Read a star catalog file into the normalized schema.

    Parameters
    ----------
    path : `str` or `os.PathLike`
        FITS (``.fits``, ``.fit``, ``.fits.gz``), ECSV (``.ecsv``),
        Parquet (``.parquet``, ``.parq``, ``.pq``) or CSV (``.csv``) file.
        Coordinates may be named ``ra|RA|coord_ra|RA_ICRS`` and
        ``dec|DEC|Dec|coord_dec|DE_ICRS`` (radians are converted when the
        column has a unit; unitless coordinates are taken as degrees), the
        magnitude ``phot_g_mean_mag|G|Gmag|gmag|mag``.

    Returns
    -------
    table : `astropy.table.Table`
        Columns `STAR_COLUMNS`; missing optional columns are NaN and a
        missing ``source_id`` is a running index.

    Raises
    ------
    StarCatalogError
        If the file does not exist or cannot be read, has no usable
        coordinate or magnitude column, has no rows or has non-finite
        coordinates.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise StarCatalogError(f"cannot read star catalog {path}: no such file")
    if path.is_dir():
        raise StarCatalogError(f"cannot read star catalog {path}: it is a directory")
    fmt = _table_format(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", u.UnitsWarning)
            table = _read_table(path, fmt)
    except Exception as exc:
        raise StarCatalogError(f"cannot read star catalog {path}: {type(exc).__name__}: {exc}") from exc
    return _normalize_star_table(table, str(path))


def write_star_catalog(table: Table, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a star catalog in the normalized schema.

    Parameters
    ----------
    table : `astropy.table.Table`
        Catalog; any column names `read_star_catalog` accepts.
    path : `str` or `os.PathLike`
        Output file; the format follows the extension as in
        `read_star_catalog`.
    overwrite : `bool`, optional
        Replace an existing file.

    Returns
    -------
    path : `pathlib.Path`
        The file written.

    Raises
    ------
    FileExistsError
        If ``path`` exists and ``overwrite`` is `False`.
    StarCatalogError
        If the extension is not supported or the table is not a usable
        star catalog.
    """
    path = Path(path).expanduser()
    fmt = _table_format(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"star catalog {path} already exists; pass overwrite=True to replace it")
    normalized = _normalize_star_table(table, f"to be written to {path}", allow_empty=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Long metadata keys become FITS HIERARCH cards; that is fine.
        warnings.filterwarnings("ignore", message=".*HIERARCH.*")
        _write_table(normalized, path, fmt, overwrite)
    return path


# ---------------------------------------------------------------------------
# Sphere geometry
# ---------------------------------------------------------------------------


def _unit_vectors(ra_deg: Any, dec_deg: Any) -> np.ndarray:
    """Unit vectors (..., 3) of ICRS positions in degrees."""
    ra = np.radians(np.asarray(ra_deg, dtype=float))
    dec = np.radians(np.asarray(dec_deg, dtype=float))
    cd = np.cos(dec)
    return np.stack([cd * np.cos(ra), cd * np.sin(ra), np.sin(dec)], axis=-1)


def _lonlat_deg(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Longitude in [0, 360) and latitude of unit vectors, in degrees."""
    lon = np.degrees(np.arctan2(xyz[..., 1], xyz[..., 0])) % 360.0
    lat = np.degrees(np.arcsin(np.clip(xyz[..., 2], -1.0, 1.0)))
    return lon, lat


def _angular_separation_deg(ra1: Any, dec1: Any, ra2: Any, dec2: Any) -> np.ndarray:
    """Great-circle distance in degrees (Vincenty formula)."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, dtype=float)) for v in (ra1, dec1, ra2, dec2))
    dra = ra2 - ra1
    num = np.hypot(
        np.cos(dec2) * np.sin(dra), np.cos(dec1) * np.sin(dec2) - np.sin(dec1) * np.cos(dec2) * np.cos(dra)
    )
    den = np.sin(dec1) * np.sin(dec2) + np.cos(dec1) * np.cos(dec2) * np.cos(dra)
    return np.degrees(np.arctan2(num, den))


def _cap_basis(ra_deg: float, dec_deg: float) -> np.ndarray:
    """Rows: the cap centre and two orthonormal vectors (east, north)."""
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    centre = np.array([math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec)])
    east = np.array([-math.sin(ra), math.cos(ra), 0.0])
    north = np.array([-math.sin(dec) * math.cos(ra), -math.sin(dec) * math.sin(ra), math.cos(dec)])
    return np.stack([centre, east, north])


def _cap_points(ra_deg: float, dec_deg: float, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    """Unit vectors at angular distance ``theta`` and position angle
    ``phi`` (radians) from a centre.
    """
    basis = _cap_basis(ra_deg, dec_deg)
    st = np.sin(theta)
    return (
        np.cos(theta)[:, None] * basis[0]
        + (st * np.cos(phi))[:, None] * basis[1]
        + (st * np.sin(phi))[:, None] * basis[2]
    )


def _cover_cap(
    ra_deg: float, dec_deg: float, radius: float, chunk_radius: float
) -> list[tuple[float, float]]:
    """Centres of cones of radius ``chunk_radius`` that cover a cap.

    Rings of centres around the cap centre, ``d = 0.98 sqrt(2) r`` apart
    in angle, each ring with centres at most ``d`` apart along the ring
    and alternate rings offset by half a step (a hexagonal-ish grid). Any
    point of the cap is then within ``sqrt((d/2)^2 + (d/2)^2) < r`` of a
    centre. Cones that do not reach the cap are left out.
    """
    if radius <= chunk_radius:
        return [(float(ra_deg % 360.0), float(dec_deg))]
    step = 0.98 * math.sqrt(2.0) * math.radians(chunk_radius)
    cap = math.radians(radius)
    rho = math.radians(chunk_radius)
    n_rings = math.ceil(cap / step)
    centres: list[tuple[float, float]] = [(float(ra_deg % 360.0), float(dec_deg))]
    for k in range(1, n_rings + 1):
        theta = min(k * step, math.pi)
        if theta - rho >= cap:
            break
        n_phi = max(1, math.ceil(2.0 * math.pi * math.sin(theta) / step))
        phi = (np.arange(n_phi) + 0.5 * (k % 2)) * (2.0 * math.pi / n_phi)
        xyz = _cap_points(ra_deg, dec_deg, np.full(n_phi, theta), phi)
        lon, lat = _lonlat_deg(xyz)
        centres.extend(zip(lon.tolist(), lat.tolist()))
        if theta >= math.pi:
            break
    return centres


def _split_cone(ra_deg: float, dec_deg: float, radius: float) -> list[tuple[float, float]]:
    """Centres of seven cones of radius ``0.55 radius`` covering a cone.

    One at the centre and six at ``sqrt(3)/2 radius`` from it: seven discs
    of half the radius cover a disc exactly, 0.55 leaves a margin.
    """
    theta = np.r_[0.0, np.full(6, 0.5 * math.sqrt(3.0) * math.radians(radius))]
    phi = np.r_[0.0, np.arange(6) * (math.pi / 3.0)]
    lon, lat = _lonlat_deg(_cap_points(ra_deg, dec_deg, theta, phi))
    return list(zip(lon.tolist(), lat.tolist()))


@functools.cache
def _icrs_to_galactic_matrix() -> np.ndarray:
    """Rotation matrix M with v_galactic = M v_icrs, from astropy."""
    from astropy.coordinates import CartesianRepresentation, SkyCoord

    basis = SkyCoord(CartesianRepresentation(np.eye(3) * u.one), frame="icrs")
    return np.array(basis.galactic.cartesian.xyz.value, dtype=float)


def _icrs_to_galactic(ra_deg: Any, dec_deg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Galactic (l, b) in degrees of ICRS positions (vectorized)."""
    xyz = _unit_vectors(ra_deg, dec_deg)
    return _lonlat_deg(xyz @ _icrs_to_galactic_matrix().T)


# ---------------------------------------------------------------------------
# Star-count model
# ---------------------------------------------------------------------------

# Sky pattern S(l, b) of Gaia DR3 sources (see the module docstring);
# maximum-likelihood fit to shared/fixtures/gaia/gaia_dr3_random_1000.fits.
_DISC_SCALE_SINB = 0.1201  # exponential scale of the disc in |sin b|
_DISC_KAPPA_L = 0.9327  # disc concentration: exp[kappa (cos l - 1)]
_BULGE_AMPLITUDE = 1.1021  # relative to the disc at l = b = 0
_BULGE_SIGMA_L = 7.695  # deg
_BULGE_SIGMA_B = 7.081  # deg
_HALO_AMPLITUDE = 0.01050  # relative to the disc at l = b = 0
_HALO_KAPPA = 0.1926  # halo concentration: exp[kappa (cos l cos b - 1)]
_DUST_DEPTH = 0.7603  # fraction of disc + bulge removed at b = 0
_DUST_WIDTH_DEG = 1.602  # Gaussian width in b of the dust lane
# Magnitude distribution: log10 dN/dG = c1 (G - 21) + c2 (G - 21)^2, and
# Gaia DR3 completeness 1 / (1 + exp[(G - G50) / w]); fitted (KS p = 0.89)
# to the same fixture.
_MAG_C1 = 0.1891
_MAG_C2 = -0.0104
_GAIA_G50 = 20.70
_GAIA_G_WIDTH = 0.25
# Calibration sample: 11.5 < G < 21, 1000 of the 1220 sources with
# random_index < 1220 (the rest fail the magnitude or astrometry cuts).
_REF_MAG_RANGE = (11.5, 21.0)
_REF_N_SOURCES = GAIA_DR3_N_SOURCES * 1000.0 / 1220.0
_MAG_GRID = np.linspace(-5.0, 32.0, 14801)


def _sky_pattern(l_deg: Any, b_deg: Any) -> np.ndarray:
    """Relative source density S(l, b) (1 for the disc at l = b = 0,
    before dust).
    """
    l_rad = np.radians(np.asarray(l_deg, dtype=float))
    b_deg = np.asarray(b_deg, dtype=float)
    b_rad = np.radians(b_deg)
    l_wrap = (np.asarray(l_deg, dtype=float) + 180.0) % 360.0 - 180.0
    dust = 1.0 - _DUST_DEPTH * np.exp(-0.5 * (b_deg / _DUST_WIDTH_DEG) ** 2)
    disc = np.exp(-np.abs(np.sin(b_rad)) / _DISC_SCALE_SINB + _DISC_KAPPA_L * (np.cos(l_rad) - 1.0))
    bulge = _BULGE_AMPLITUDE * np.exp(-0.5 * ((l_wrap / _BULGE_SIGMA_L) ** 2 + (b_deg / _BULGE_SIGMA_B) ** 2))
    halo = _HALO_AMPLITUDE * np.exp(_HALO_KAPPA * (np.cos(l_rad) * np.cos(b_rad) - 1.0))
    return (disc + bulge) * dust + halo


@functools.cache
def _sky_amplitude() -> float:
    """A: stars per deg^2 (11.5 < G < 21) for S = 1, from the all-sky
    total.
    """
    nz, nl = 2400, 720
    z = (np.arange(nz) + 0.5) / nz * 2.0 - 1.0
    lon = (np.arange(nl) + 0.5) / nl * 360.0
    b_deg = np.degrees(np.arcsin(z))
    pattern = _sky_pattern(lon[None, :], b_deg[:, None])
    cell_deg2 = (2.0 / nz) * (2.0 * math.pi / nl) * (180.0 / math.pi) ** 2
    return float(_REF_N_SOURCES / (pattern.sum() * cell_deg2))


def gaia_completeness(g: Any) -> np.ndarray:
    """Fraction of stars of magnitude G that Gaia DR3 catalogs (with an
    astrometric solution), as used by the star-count model.

    Parameters
    ----------
    g : array-like
        G magnitudes.

    Returns
    -------
    completeness : `numpy.ndarray`
        Logistic function, 0.5 at G = 20.70, width 0.25 mag.
    """
    g = np.asarray(g, dtype=float)
    return 1.0 / (1.0 + np.exp(np.clip((g - _GAIA_G50) / _GAIA_G_WIDTH, -700, 700)))


@functools.cache
def _mag_cumulative(gaia_selection: bool) -> np.ndarray:
    """Cumulative of dN/dG on `_MAG_GRID`, in units of the calibration
    sample (1 = all stars with 11.5 < G < 21 that Gaia catalogs).
    """
    dg = _MAG_GRID - 21.0
    dndg_true = 10.0 ** (_MAG_C1 * dg + _MAG_C2 * dg**2)
    dndg_gaia = dndg_true * gaia_completeness(_MAG_GRID)
    dndg = dndg_gaia if gaia_selection else dndg_true
    steps = 0.5 * (dndg[1:] + dndg[:-1]) * np.diff(_MAG_GRID)
    cum = np.concatenate([[0.0], np.cumsum(steps)])
    steps_gaia = 0.5 * (dndg_gaia[1:] + dndg_gaia[:-1]) * np.diff(_MAG_GRID)
    cum_gaia = np.concatenate([[0.0], np.cumsum(steps_gaia)])
    lo, hi = np.interp(_REF_MAG_RANGE, _MAG_GRID, cum_gaia)
    return cum / (hi - lo)


def _mag_fraction(mag: Any, gaia_selection: bool) -> np.ndarray:
    """Stars brighter than ``mag`` relative to the calibration sample."""
    return np.interp(np.asarray(mag, dtype=float), _MAG_GRID, _mag_cumulative(gaia_selection))


def galactic_star_density(
    b_deg: Any, mag_limit: Any, l_deg: Any = None, *, gaia_selection: bool = False
) -> float | np.ndarray:
    """Number of stars per square degree brighter than a G magnitude.

    The model of the module docstring, calibrated on Gaia DR3.

    Parameters
    ----------
    b_deg : `float` or array-like
        Galactic latitude (deg).
    mag_limit : `float` or array-like
        Faint G limit.
    l_deg : `float` or array-like, optional
        Galactic longitude (deg). If `None`, the density is averaged over
        longitude.
    gaia_selection : `bool`, optional
        Include Gaia DR3's completeness near its faint limit (what the Gaia
        catalog holds). The default, `False`, counts all stars: use it
        for stars fainter than Gaia, down to an image's depth.

    Returns
    -------
    density : `float` or `numpy.ndarray`
        Stars per deg^2 (a `float` when all arguments are scalars; the
        arguments broadcast).
    """
    scalar = np.ndim(b_deg) == 0 and np.ndim(mag_limit) == 0 and np.ndim(l_deg) == 0
    b = np.asarray(b_deg, dtype=float)
    frac = _mag_fraction(mag_limit, gaia_selection)
    if l_deg is None:
        lon = (np.arange(360) + 0.5) * 1.0
        pattern = _sky_pattern(lon, b[..., None]).mean(axis=-1)
    else:
        pattern = _sky_pattern(np.asarray(l_deg, dtype=float), b)
    density = _sky_amplitude() * pattern * frac
    return float(density) if scalar else np.asarray(density)


# ---------------------------------------------------------------------------
# Colours and bands
# ---------------------------------------------------------------------------

# Gaia (E)DR3 -> SDSS photometric relations in x = G_BP - G_RP:
# Riello et al. 2021, A&A 649, A3, Table C.2 (also Gaia DR3 documentation,
# section 5.5.1), coefficients of G - band for x^0, x^1, ...; the second
# tuple is the colour range of the fit (beyond it we extrapolate linearly),
# sigma is the scatter of the relation.
_GAIA_SDSS_POLY: dict[str, tuple[tuple[float, ...], tuple[float, float]]] = {
    "g": ((0.2199, -0.6365, -0.1548, 0.0064), (0.3, 3.0)),  # sigma 0.0745
    "r": ((-0.09837, 0.08592, 0.1907, -0.1701, 0.02263), (0.0, 3.0)),  # sigma 0.0378
    "i": ((-0.293, 0.6404, -0.09609, -0.002104), (0.5, 2.0)),  # sigma 0.0409
}
# u, z and y have no Gaia relation. We use the SDSS main-sequence stellar
# locus (approximate, after Covey et al. 2007, AJ 134, 2398; +-0.1-0.2 mag):
# u - g as a function of g - r (table below), i - z = 0.55 (r - i) - 0.03
# and z - y = 0.5 (i - z) - 0.005. Both reproduce the Sun (Willmer 2018,
# ApJS 236, 47: i - z = 0.03, z - y = 0.01).
_LOCUS_GR = np.array([-0.4, -0.2, 0.0, 0.2, 0.45, 0.7, 1.0, 1.3, 1.6])
_LOCUS_UG = np.array([0.60, 0.95, 0.95, 1.00, 1.30, 1.85, 2.40, 2.55, 2.60])
_DEFAULT_BP_RP = 0.8
BANDS = ("u", "g", "r", "i", "z", "y")


def _poly_linear_ext(coeffs: Sequence[float], lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    """Polynomial inside [lo, hi], continued linearly outside it."""
    poly = np.polynomial.Polynomial(coeffs)
    deriv = poly.deriv()
    inside = np.clip(x, lo, hi)
    return poly(inside) + deriv(inside) * (x - inside)


def gaia_to_band(g: Any, bp_rp: Any, band: str) -> np.ndarray:
    """Convert Gaia G and BP - RP to an SDSS/LSST-like AB magnitude.

    g, r and i use the published Gaia (E)DR3 - SDSS polynomials (Riello
    et al. 2021, Table C.2; scatter 0.04-0.07 mag); u, z and y continue
    them along the stellar locus (about 0.1-0.2 mag). The SDSS and LSST
    systems differ by less than about 0.1 mag for stars.

    Parameters
    ----------
    g : array-like
        Gaia G magnitudes.
    bp_rp : array-like
        Gaia BP - RP colours; NaN (missing) is replaced by 0.8.
    band : `str`
        One of ``u, g, r, i, z, y``.

    Returns
    -------
    mag : `numpy.ndarray`
        Magnitudes in ``band`` (float64, broadcast shape of the inputs).

    Raises
    ------
    ValueError
        If ``band`` is not one of the six.
    """
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r}; expected one of {', '.join(BANDS)}")
    g = np.asarray(g, dtype=float)
    x = np.asarray(bp_rp, dtype=float)
    x = np.where(np.isfinite(x), x, _DEFAULT_BP_RP)
    g, x = np.broadcast_arrays(g, x)

    def sdss(name: str) -> np.ndarray:
        coeffs, (lo, hi) = _GAIA_SDSS_POLY[name]
        return g - _poly_linear_ext(coeffs, lo, hi, x)

    if band in ("g", "r", "i"):
        return sdss(band)
    if band == "u":
        mag_g = sdss("g")
        return mag_g + np.interp(mag_g - sdss("r"), _LOCUS_GR, _LOCUS_UG)
    mag_r, mag_i = sdss("r"), sdss("i")
    i_z = 0.55 * (mag_r - mag_i) - 0.03
    mag_z = mag_i - i_z
    if band == "z":
        return mag_z
    return mag_z - (0.5 * i_z - 0.005)


# ---------------------------------------------------------------------------
# Synthetic catalog
# ---------------------------------------------------------------------------

# BP - RP: two-Gaussian mixtures fitted to the fixture in bands of |sin b|
# (reddening and population change with latitude), interpolated linearly
# in |sin b|: (|sin b|, weight of the first, mean1, sigma1, mean2, sigma2).
_COLOUR_NODES = np.array(
    [
        [0.05, 0.789, 1.722, 0.409, 2.582, 0.768],
        [0.20, 0.465, 1.175, 0.199, 1.556, 0.453],
        [0.65, 0.350, 1.040, 0.198, 1.640, 0.613],
    ]
)
# Fraction of sources without BP - RP (fixture: none at G < 18, about 12
# per cent at G > 19).
_MISSING_COLOUR_MAX = 0.12
_MISSING_COLOUR_G50 = 18.9
# Kinematics: flat rotation curve, Sun at 8.2 kpc, V0 = 236 km/s, solar
# peculiar motion (11.1, 12.24, 7.25) km/s (Schoenrich et al. 2010); a lag
# of 90 km/s and a dispersion of 40 + 30 km/s per kpc of height above the
# plane; absolute magnitudes M_G = 2.5 + 0.7 (G - 14) +- 1.5 set the
# distance. With Gaia-like errors this matches the fixture's pmra, pmdec
# and parallax distributions to a KS distance of about 0.06.
_R0_KPC = 8.2
_V0_KMS = 236.0
_V_SUN = np.array([11.1, _V0_KMS + 12.24, 7.25])
_V_LAG_PER_KPC = 90.0
_SIGMA_V = (40.0, 30.0, 150.0)  # km/s at z = 0, per kpc of |z|, maximum
_ABS_MAG = (2.5, 0.7, 1.5)  # M_G at G = 14, slope, scatter
_K_KMS = 4.740470  # km/s per (mas/yr * kpc)


def _synthetic_colours(rng: np.random.Generator, sin_b: np.ndarray, g: np.ndarray) -> np.ndarray:
    nodes = _COLOUR_NODES
    params = [np.interp(np.abs(sin_b), nodes[:, 0], nodes[:, k]) for k in range(1, 6)]
    weight, mu1, s1, mu2, s2 = params
    first = rng.random(len(g)) < weight
    z = rng.standard_normal(len(g))
    colour = np.where(first, mu1 + s1 * z, mu2 + s2 * z)
    colour = np.clip(colour, -0.6, 6.0)
    p_missing = _MISSING_COLOUR_MAX / (1.0 + np.exp(-(g - _MISSING_COLOUR_G50) / 0.25))
    colour[rng.random(len(g)) < p_missing] = np.nan
    return colour


def _parallax_error(g: np.ndarray) -> np.ndarray:
    """Parallax uncertainty (mas): 1.3 times the Gaia EDR3 five-parameter
    performance, sqrt(40 + 800 z + 30 z^2) uas with z = 10^(0.4 (G - 15)),
    G >= 13.
    """
    z = 10.0 ** (0.4 * (np.maximum(g, 13.0) - 15.0))
    return 1.3e-3 * np.sqrt(40.0 + 800.0 * z + 30.0 * z**2)


def _synthetic_kinematics(
    rng: np.random.Generator, ra: np.ndarray, dec: np.ndarray, g: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Proper motions (mas/yr) and parallaxes (mas) of synthetic stars."""
    n = len(g)
    matrix = _icrs_to_galactic_matrix()
    xyz_icrs = _unit_vectors(ra, dec)
    xyz_gal = xyz_icrs @ matrix.T
    l_deg, b_deg = _lonlat_deg(xyz_gal)
    cl, sl = np.cos(np.radians(l_deg)), np.sin(np.radians(l_deg))
    cb, sb = np.cos(np.radians(b_deg)), np.sin(np.radians(b_deg))
    abs_mag = _ABS_MAG[0] + _ABS_MAG[1] * (g - 14.0) + rng.normal(0.0, _ABS_MAG[2], n)
    dist = np.clip(10.0 ** ((g - abs_mag + 5.0) / 5.0) / 1000.0, 0.02, 60.0)  # kpc
    # Heliocentric Galactic frame: x to the centre, y to l = 90, z to NGP.
    x, y, zh = dist * cb * cl, dist * cb * sl, dist * sb
    px, py = x - _R0_KPC, y
    rcyl = np.maximum(np.hypot(px, py), 0.05)
    vcirc = np.clip(_V0_KMS - _V_LAG_PER_KPC * np.abs(zh), 0.0, None)
    sigma = np.minimum(_SIGMA_V[0] + _SIGMA_V[1] * np.abs(zh), _SIGMA_V[2])
    vel = (
        np.stack(
            [
                vcirc * py / rcyl + rng.normal(0.0, 1.0, n) * sigma,
                -vcirc * px / rcyl + rng.normal(0.0, 1.0, n) * sigma,
                rng.normal(0.0, 0.6, n) * sigma,
            ],
            axis=-1,
        )
        - _V_SUN
    )
    e_l = np.stack([-sl, cl, np.zeros(n)], axis=-1)
    e_b = np.stack([-sb * cl, -sb * sl, cb], axis=-1)
    mu_l = np.einsum("ij,ij->i", vel, e_l) / (_K_KMS * dist)
    mu_b = np.einsum("ij,ij->i", vel, e_b) / (_K_KMS * dist)
    # Rotate (mu_l*, mu_b) to (mu_ra*, mu_dec) with the ICRS basis vectors.
    ra_r, dec_r = np.radians(ra), np.radians(dec)
    e_ra = np.stack([-np.sin(ra_r), np.cos(ra_r), np.zeros(n)], axis=-1)
    e_dec = np.stack([-np.sin(dec_r) * np.cos(ra_r), -np.sin(dec_r) * np.sin(ra_r), np.cos(dec_r)], axis=-1)
    e_l_icrs, e_b_icrs = e_l @ matrix, e_b @ matrix
    pmra = mu_l * np.einsum("ij,ij->i", e_l_icrs, e_ra) + mu_b * np.einsum("ij,ij->i", e_b_icrs, e_ra)
    pmdec = mu_l * np.einsum("ij,ij->i", e_l_icrs, e_dec) + mu_b * np.einsum("ij,ij->i", e_b_icrs, e_dec)
    err = _parallax_error(g)
    parallax = 1.0 / dist + rng.normal(0.0, 1.0, n) * err
    pmra = pmra + rng.normal(0.0, 1.0, n) * err
    pmdec = pmdec + rng.normal(0.0, 1.0, n) * err
    return pmra, pmdec, parallax


def _gaia_like_source_ids(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Gaia-style ids: HEALPix level-12 nested index * 2^35 + a running
    number within the pixel (in generation order).
    """
    import hpgeom

    n = len(ra)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    pix = hpgeom.angle_to_pixel(4096, ra, dec, nest=True, lonlat=True, degrees=True)
    pix = np.asarray(pix, dtype=np.int64)
    order = np.argsort(pix, kind="stable")
    sorted_pix = pix[order]
    starts = np.flatnonzero(np.r_[True, sorted_pix[1:] != sorted_pix[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    running = np.empty(n, dtype=np.int64)
    running[order] = np.arange(n) - group_start + 1
    return pix * (2**35) + running


def _thinned_cap_sample(
    rng: np.random.Generator, ra: float, dec: float, cos_r: float, s_max: float, mean_candidates: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Poisson process on a cap with intensity proportional to
    `_sky_pattern`, by thinning uniform candidates with envelope
    ``s_max``. Candidates are handled in batches to bound the memory.

    Returns unit vectors, sin(b) of the kept points and the largest
    pattern value met (above ``s_max`` the draw is invalid).
    """
    n_cand = int(rng.poisson(mean_candidates))
    batch = 2_000_000
    kept_xyz, kept_sinb = [np.zeros((0, 3))], [np.zeros(0)]
    for start in range(0, n_cand, batch):
        m = min(batch, n_cand - start)
        cos_t = 1.0 - (1.0 - cos_r) * rng.random(m)
        phi = 2.0 * math.pi * rng.random(m)
        xyz = _cap_points(ra, dec, np.arccos(np.clip(cos_t, -1.0, 1.0)), phi)
        cand_l, cand_b = _lonlat_deg(xyz @ _icrs_to_galactic_matrix().T)
        pattern = _sky_pattern(cand_l, cand_b)
        peak = float(pattern.max())
        if peak > s_max:
            return kept_xyz[0], kept_sinb[0], peak
        keep = rng.random(m) * s_max < pattern
        kept_xyz.append(xyz[keep])
        kept_sinb.append(np.sin(np.radians(cand_b[keep])))
    return np.concatenate(kept_xyz), np.concatenate(kept_sinb), 0.0


def _validate_cone(
    ra: float, dec: float, radius: float, mag_limit: float
) -> tuple[float, float, float, float]:
    try:
        ra, dec, radius, mag_limit = (float(v) for v in (ra, dec, radius, mag_limit))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"ra, dec, radius and mag_limit must be numbers: {exc}") from exc
    if not math.isfinite(ra):
        raise ValueError(f"ra must be finite, got {ra}")
    if not (math.isfinite(dec) and -90.0 <= dec <= 90.0):
        raise ValueError(f"dec must be between -90 and 90 deg, got {dec}")
    if not (math.isfinite(radius) and 0.0 < radius <= 180.0):
        raise ValueError(f"radius must be > 0 and <= 180 deg, got {radius}")
    if not math.isfinite(mag_limit):
        raise ValueError(f"mag_limit must be finite, got {mag_limit}")
    return ra % 360.0, dec, radius, mag_limit


def synthetic_gaia_catalog(
    ra: float,
    dec: float,
    radius: float,
    mag_limit: float,
    *,
    seed: int,
    mag_bright: float = 10.0,
    gaia_selection: bool = True,
    max_stars: int = 20_000_000,
) -> Table:
    """Draw an offline Gaia-like star catalog in a cone.

    Positions are an inhomogeneous Poisson process on the spherical cap
    with the intensity of `galactic_star_density` (drawn uniformly on the
    cap and thinned), so counts and their gradients across the cone follow
    the Gaia DR3 calibration. G follows the model's magnitude distribution
    between ``mag_bright`` and ``mag_limit``; BP - RP a latitude-dependent
    mixture fitted to Gaia DR3 (NaN for about 12 per cent of faint
    stars); proper motions and parallaxes come from Galactic rotation,
    solar motion and a velocity dispersion for a distance drawn from G.

    Parameters
    ----------
    ra, dec : `float`
        Cone centre (ICRS, deg).
    radius : `float`
        Cone radius (deg), up to 180.
    mag_limit : `float`
        Faint G limit.
    seed : `int`
        Random seed; the catalog is a deterministic function of all the
        arguments.
    mag_bright : `float`, optional
        Bright G limit.
    gaia_selection : `bool`, optional
        Apply Gaia DR3's completeness near G = 21 (default), as in the
        real catalog.
    max_stars : `int`, optional
        Refuse cones expected to hold more stars than this.

    Returns
    -------
    table : `astropy.table.Table`
        Columns `STAR_COLUMNS`, sorted by ``source_id`` (Gaia-style: the
        HEALPix level-12 index times 2^35 plus a running number).

    Raises
    ------
    ValueError
        For an invalid cone, ``mag_bright >= mag_limit`` or too many stars.
    """
    ra, dec, radius, mag_limit = _validate_cone(ra, dec, radius, mag_limit)
    mag_bright = float(mag_bright)
    if not mag_bright < mag_limit:
        raise ValueError(f"mag_bright ({mag_bright}) must be brighter (smaller) than mag_limit ({mag_limit})")
    rng = np.random.default_rng(seed)
    cos_r = math.cos(math.radians(radius))
    area_deg2 = 2.0 * math.pi * (1.0 - cos_r) * (180.0 / math.pi) ** 2
    frac = float(_mag_fraction(mag_limit, gaia_selection) - _mag_fraction(mag_bright, gaia_selection))
    per_deg2 = _sky_amplitude() * frac  # stars per deg^2 where S = 1

    # Envelope of S over the cap from a Fibonacci lattice of probes.
    n_probe = 4096
    k = np.arange(n_probe) + 0.5
    probe_theta = np.arccos(1.0 - (1.0 - cos_r) * k / n_probe)
    probe_phi = k * math.pi * (3.0 - math.sqrt(5.0))
    probes = _cap_points(ra, dec, np.r_[0.0, probe_theta], np.r_[0.0, probe_phi])
    pl, pb = _lonlat_deg(probes @ _icrs_to_galactic_matrix().T)
    probe_s = _sky_pattern(pl, pb)
    expected = float(probe_s.mean()) * per_deg2 * area_deg2
    if expected > max_stars:
        raise ValueError(
            f"a cone of radius {radius} deg at G < {mag_limit} holds about {expected:.3g} stars, more than "
            f"max_stars={max_stars}; use a smaller radius or a brighter mag_limit"
        )
    s_max = 1.25 * float(probe_s.max())
    while True:
        xyz, sin_b, peak = _thinned_cap_sample(rng, ra, dec, cos_r, s_max, s_max * per_deg2 * area_deg2)
        if peak <= s_max:
            break
        s_max = 1.25 * peak  # the probes missed a peak: draw again
    n = len(xyz)
    star_ra, star_dec = _lonlat_deg(xyz)
    lo = _mag_fraction(mag_bright, gaia_selection)
    hi = _mag_fraction(mag_limit, gaia_selection)
    cum = _mag_cumulative(gaia_selection)
    g = np.interp(lo + (hi - lo) * rng.random(n), cum, _MAG_GRID)
    bp_rp = _synthetic_colours(rng, sin_b, g)
    pmra, pmdec, parallax = _synthetic_kinematics(rng, star_ra, star_dec, g)
    ids = _gaia_like_source_ids(star_ra, star_dec)
    order = np.argsort(ids)
    columns = {
        "source_id": ids,
        "ra": star_ra,
        "dec": star_dec,
        "phot_g_mean_mag": g,
        "bp_rp": bp_rp,
        "pmra": pmra,
        "pmdec": pmdec,
        "parallax": parallax,
    }
    meta = {
        "catalog": "synthetic",
        "model": "lsst.trail_detect Gaia DR3 star-count model",
        "seed": int(seed),
        "cone_ra": ra,
        "cone_dec": dec,
        "cone_radius": radius,
        "mag_bright": mag_bright,
        "mag_limit": mag_limit,
        "gaia_selection": bool(gaia_selection),
    }
    return _make_star_table({key: value[order] for key, value in columns.items()}, meta)


# ---------------------------------------------------------------------------
# Gaia archive
# ---------------------------------------------------------------------------


def _cone_adql(ra: float, dec: float, radius: float, mag_limit: float, max_rows: int) -> str:
    return (
        f"SELECT TOP {int(max_rows)} {', '.join(STAR_COLUMNS)} FROM {GAIA_TABLE} "
        f"WHERE CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', {ra:.9f}, {dec:.9f}, {radius:.9f})) = 1 "
        f"AND phot_g_mean_mag < {mag_limit:.4f}"
    )


def _count_adql(query: str) -> str:
    """COUNT(*) version of a cone query (same WHERE clause)."""
    where = query[query.index(" WHERE ") :]
    return f"SELECT TOP 1 COUNT(*) AS n FROM {GAIA_TABLE}{where}"


@contextlib.contextmanager
def _status_messages_disabled():
    """Keep ``astroquery.gaia``'s import-time status request off the
    network.

    Importing the package builds ``Gaia = GaiaClass()``, which asks the
    archive for status messages (and hangs where DNS hangs). While the
    import runs, that request fails at once instead, and its print is
    swallowed.
    """
    from astroquery.utils.tap.conn.tapconn import TapConn

    original = TapConn.execute_tapget

    def offline(self, *args, **kwargs):
        raise OSError("status messages are not fetched by lsst.trail_detect")

    TapConn.execute_tapget = offline
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        TapConn.execute_tapget = original


def _make_gaia_client() -> Any:
    """A ``GaiaClass`` that does not print server messages."""
    if "astroquery.gaia" not in sys.modules:
        with _status_messages_disabled():
            import astroquery.gaia  # noqa: F401
    from astroquery.gaia import GaiaClass

    return GaiaClass(show_server_messages=False)


def _one_line(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _classify_error(exc: BaseException) -> str:
    """'unreachable', 'transient', 'rejected' (HTTP 4xx) or 'other'."""
    import http.client

    try:
        import requests
    except ImportError:  # pragma: no cover - astroquery depends on requests
        requests = None
    if requests is not None and isinstance(exc, requests.exceptions.HTTPError):
        match = re.search(r"Error (\d{3})\b", str(exc))
        status = int(match.group(1)) if match else None
        if status is not None and 400 <= status < 500 and status not in (408, 429):
            return "rejected"
        return "transient"
    if isinstance(exc, (socket.gaierror, ConnectionRefusedError, TimeoutError, socket.timeout)):
        return "unreachable"
    if requests is not None and isinstance(
        exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)
    ):
        return "unreachable"
    if isinstance(exc, OSError) and getattr(exc, "errno", None) in (101, 113):  # ENETUNREACH, EHOSTUNREACH
        return "unreachable"
    if isinstance(exc, (OSError, http.client.HTTPException)):
        return "transient"
    return "other"


def _unreachable_reason(exc: BaseException) -> str:
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed: {_one_line(exc)}"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "connection timed out"
    return _one_line(exc)


def _call_with_retries(func: Callable[[], Any], *, retries: int, retry_wait: float) -> Any:
    """Call ``func``, retrying network errors with exponential backoff."""
    attempts = int(retries) + 1
    last: BaseException | None = None
    all_unreachable = True
    for attempt in range(attempts):
        try:
            return func()
        except Exception as exc:
            kind = _classify_error(exc)
            if kind == "other":
                raise
            if kind == "rejected":
                raise GaiaQueryError(f"the Gaia archive rejected the query: {_one_line(exc)}") from exc
            last = exc
            all_unreachable &= kind == "unreachable"
            _LOG.info("Gaia archive attempt %d of %d failed: %s", attempt + 1, attempts, _one_line(exc))
            if attempt + 1 < attempts and retry_wait > 0:
                time.sleep(retry_wait * 2**attempt)
    assert last is not None
    hint = (
        "Use '--catalog synthetic' for an offline Gaia-like catalog, or '--catalog FILE' with a local "
        "star catalog (FITS, ECSV, Parquet or CSV)."
    )
    if all_unreachable:
        message = (
            f"The Gaia archive ({GAIA_ARCHIVE_HOST}) is unreachable after {attempts} attempt(s): "
            f"{_unreachable_reason(last)}; this machine may be offline. {hint}"
        )
    else:
        message = (
            f"The Gaia archive ({GAIA_ARCHIVE_HOST}) did not answer after {attempts} attempt(s); "
            f"last error: {_one_line(last)}. {hint}"
        )
    raise GaiaUnavailableError(message) from last


def _run_adql(gaia: Any, query: str) -> Table:
    job = gaia.launch_job(query, output_format="json")
    result = job.get_results()
    if result is None:
        raise GaiaQueryError(f"the Gaia archive returned no result table for: {query}")
    return result


def _query_chunk(gaia_factory: Callable[[], Any], query: str, retries: int, retry_wait: float) -> Table:
    """Run one cone query; return the normalized table."""
    try:
        raw = _call_with_retries(
            lambda: _run_adql(gaia_factory(), query), retries=retries, retry_wait=retry_wait
        )
    except (GaiaUnavailableError, GaiaQueryError):
        raise
    except Exception as exc:
        # astroquery cannot parse an empty JSON answer (it hands it to the
        # pandas reader); a COUNT(*) tells an empty cone from a real error.
        counted = _call_with_retries(
            lambda: _run_adql(gaia_factory(), _count_adql(query)), retries=retries, retry_wait=retry_wait
        )
        try:
            count = int(np.asarray(counted[counted.colnames[0]])[0])
        except Exception:
            count = -1
        if count == 0:
            return _empty_star_table()
        raise GaiaQueryError(f"could not read the Gaia archive's answer: {_one_line(exc)}") from exc
    return _normalize_star_table(raw, "from the Gaia archive", allow_empty=True)


def _cache_path(cache_dir: Path, query: str) -> Path:
    key = hashlib.sha256(f"{query}\nformat=json\nschema={','.join(STAR_COLUMNS)}".encode()).hexdigest()
    return cache_dir / f"gaia_dr3_{key[:32]}.ecsv"


def _read_cache(path: Path, query: str) -> Table | None:
    if not path.exists():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", u.UnitsWarning)
            table = Table.read(path, format="ascii.ecsv")
        if table.meta.get("adql") != query:
            raise ValueError("cached query text differs")
        return _normalize_star_table(table, str(path), allow_empty=True)
    except Exception as exc:
        _LOG.warning("Ignoring unreadable Gaia cache file %s: %s", path, _one_line(exc))
        return None


def _write_cache(path: Path, query: str, table: Table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    out = table.copy(copy_data=False)
    out.meta = {"adql": query, "source": f"{GAIA_ARCHIVE_HOST} {GAIA_TABLE}"}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp_", suffix=".ecsv")
    os.close(fd)
    try:
        out.write(tmp, format="ascii.ecsv", overwrite=True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def fetch_gaia_cone(
    ra: float,
    dec: float,
    radius: float,
    mag_limit: float,
    *,
    cache_dir: str | os.PathLike | None = None,
    retries: int = 3,
    retry_wait: float = 2.0,
    chunk_radius: float = 0.5,
    gaia: Any = None,
    max_rows: int = 2000,
) -> Table:
    """Query Gaia DR3 stars in a cone from the Gaia archive.

    Runs synchronous ADQL queries on ``gaiadr3.gaia_source`` through
    astroquery (``launch_job(..., output_format="json")``). A cone larger
    than ``chunk_radius`` (or expected, from `galactic_star_density`, to
    hold more than half of ``max_rows`` stars per query) is covered by a
    hexagonal-ish grid of smaller cones; a chunk that comes back with
    ``max_rows`` rows (truncated) is split again. Rows are de-duplicated by
    ``source_id`` and cut to the requested cone.

    Parameters
    ----------
    ra, dec : `float`
        Cone centre (ICRS, deg).
    radius : `float`
        Cone radius (deg).
    mag_limit : `float`
        Faint G limit (``phot_g_mean_mag < mag_limit``).
    cache_dir : path-like, optional
        Directory caching each chunk's answer (ECSV, keyed by a hash of the
        ADQL); cached chunks are reused without touching the network.
    retries : `int`, optional
        Retries of a query after a network error (so ``retries + 1``
        attempts), waiting ``retry_wait * 2**k`` seconds before retry k+1.
    retry_wait : `float`, optional
        Base wait (s) between attempts.
    chunk_radius : `float`, optional
        Largest radius (deg) of one query.
    gaia : optional
        Object with astroquery's ``GaiaClass.launch_job`` API; by default a
        ``GaiaClass(show_server_messages=False)`` is built when needed.
    max_rows : `int`, optional
        Row limit of one synchronous query (``SELECT TOP max_rows``).

    Returns
    -------
    table : `astropy.table.Table`
        Columns `STAR_COLUMNS` sorted by ``source_id`` (possibly empty).

    Raises
    ------
    ValueError
        For invalid arguments (the message names the argument).
    GaiaUnavailableError
        If the archive cannot be reached (or keeps failing) after the
        retries.
    GaiaQueryError
        If the archive rejects a query or its answer cannot be read.
    """
    ra, dec, radius, mag_limit = _validate_cone(ra, dec, radius, mag_limit)
    if not (math.isfinite(chunk_radius) and chunk_radius > 0):
        raise ValueError(f"chunk_radius must be > 0 deg, got {chunk_radius}")
    if int(retries) < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if not retry_wait >= 0:
        raise ValueError(f"retry_wait must be >= 0 s, got {retry_wait}")
    if int(max_rows) < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    max_rows = int(max_rows)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None

    client: list[Any] = [gaia]

    def gaia_factory() -> Any:
        if client[0] is None:
            client[0] = _make_gaia_client()
        return client[0]

    # Chunk size: at most chunk_radius, and small enough that the densest
    # part of the cone (per the model, with a margin) fills half a query.
    probe = _cover_cap(ra, dec, radius, max(radius / 8.0, 1e-6))
    pl, pb = _icrs_to_galactic(*np.array(probe).T)
    n_max = 2.0 * float(np.max(galactic_star_density(pb, mag_limit, pl, gaia_selection=True)))
    rho_fill = math.sqrt(0.5 * max_rows / max(n_max, 1e-9) / math.pi)
    rho = min(chunk_radius, max(rho_fill, 1.0 / 3600.0))
    centres = _cover_cap(ra, dec, radius, rho)
    if len(centres) > 20000:
        raise ValueError(
            f"a cone of radius {radius} deg at G < {mag_limit} needs about {len(centres)} Gaia queries; "
            "use a smaller radius or a brighter mag_limit"
        )
    chunk_r = radius if len(centres) == 1 else rho
    _LOG.info(
        "Gaia cone (%.5f, %.5f) r=%.4f deg G<%.2f: %d quer%s of radius %.4f deg",
        ra,
        dec,
        radius,
        mag_limit,
        len(centres),
        "y" if len(centres) == 1 else "ies",
        chunk_r,
    )

    pieces: list[Table] = []
    stats = {"network": 0, "cached": 0}

    def fetch(cra: float, cdec: float, crad: float, depth: int) -> None:
        query = _cone_adql(cra, cdec, crad, mag_limit, max_rows)
        path = _cache_path(cache, query) if cache is not None else None
        table = _read_cache(path, query) if path is not None else None
        if table is None:
            table = _query_chunk(gaia_factory, query, retries, retry_wait)
            stats["network"] += 1
            if path is not None:
                _write_cache(path, query, table)
        else:
            stats["cached"] += 1
        if len(table) >= max_rows and crad > 1.0 / 3600.0 and depth < 12:
            # Truncated by TOP: split into seven cones of 0.55 times the
            # radius (one central, six around it), keeping those that reach
            # the requested cone.
            sub = 0.55 * crad
            for sra, sdec in _split_cone(cra, cdec, crad):
                if _angular_separation_deg(ra, dec, sra, sdec) < radius + sub:
                    fetch(sra, sdec, sub, depth + 1)
            return
        if len(table) >= max_rows:
            warnings.warn(
                f"Gaia query still truncated at {max_rows} rows in a {crad * 3600:.2f} arcsec cone",
                stacklevel=3,
            )
        pieces.append(table)

    for cra, cdec in centres:
        fetch(cra, cdec, chunk_r, 0)
    meta = {
        "catalog": GAIA_TABLE,
        "archive": GAIA_ARCHIVE_HOST,
        "cone_ra": ra,
        "cone_dec": dec,
        "cone_radius": radius,
        "mag_limit": mag_limit,
        "n_queries": stats["network"],
        "n_cached": stats["cached"],
    }
    nonempty = [p for p in pieces if len(p)]
    if not nonempty:
        return _empty_star_table(meta)
    table = vstack(nonempty, join_type="exact", metadata_conflicts="silent")
    _, first = np.unique(np.asarray(table["source_id"]), return_index=True)
    table = table[np.sort(first)]
    inside = _angular_separation_deg(ra, dec, table["ra"], table["dec"]) <= radius
    inside &= np.asarray(table["phot_g_mean_mag"]) < mag_limit
    table = table[inside]
    table = table[np.argsort(np.asarray(table["source_id"]), kind="stable")]
    return _make_star_table({name: np.asarray(table[name]) for name in STAR_COLUMNS}, meta)


# ---------------------------------------------------------------------------
# Butler
# ---------------------------------------------------------------------------


def shard_by_htm7(table: Table, level: int = 7) -> dict[int, Table]:
    """Group catalog rows by HTM trixel.

    Parameters
    ----------
    table : `astropy.table.Table`
        Catalog with ``ra`` and ``dec`` in degrees.
    level : `int`, optional
        HTM level (7 gives trixels of about 0.3 deg^2).

    Returns
    -------
    shards : `dict` [`int`, `astropy.table.Table`]
        Rows of each trixel (``lsst.sphgeom.HtmPixelization(level)``
        index), sorted by index; row order within a shard is kept.
    """
    import lsst.sphgeom as sphgeom

    pixelization = sphgeom.HtmPixelization(level)
    n = len(table)
    if n == 0:
        return {}
    xyz = _unit_vectors(np.asarray(table["ra"], dtype=float), np.asarray(table["dec"], dtype=float))
    index = np.fromiter(
        (pixelization.index(sphgeom.UnitVector3d(x, y, z)) for x, y, z in xyz.tolist()),
        dtype=np.int64,
        count=n,
    )
    order = np.argsort(index, kind="stable")
    sorted_index = index[order]
    bounds = np.flatnonzero(np.r_[True, sorted_index[1:] != sorted_index[:-1], True])
    return {
        int(sorted_index[start]): table[order[start:stop]] for start, stop in zip(bounds[:-1], bounds[1:])
    }


def _rollback(butler: Any, run: str, created_run: bool, refs: list, dataset_type: str | None) -> None:
    """Remove what a failed ingest wrote (best effort, never raises)."""
    try:
        if created_run:
            butler.removeRuns([run])
        elif refs:
            butler.pruneDatasets(refs, disassociate=True, unstore=True, purge=True)
    except Exception as exc:  # pragma: no cover - depends on the failure
        _LOG.error("Could not remove the partial ingest from run %s: %s", run, exc)
    if dataset_type is not None:
        try:
            butler.registry.removeDatasetType(dataset_type)
        except Exception as exc:  # pragma: no cover
            _LOG.error("Could not remove dataset type %s after a failed ingest: %s", dataset_type, exc)


def ingest_star_catalog(
    butler: Any, table: Table, *, run: str, dataset_type: str = "gaia_dr3_stars", level: int = 7
) -> int:
    """Write a star catalog to a Butler repository, one dataset per HTM
    trixel.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable Butler.
    table : `astropy.table.Table`
        Star catalog (normalized on the way in).
    run : `str`
        RUN collection to write to (registered if needed).
    dataset_type : `str`, optional
        Dataset type name; registered with dimensions ``(htm<level>,)``
        and storage class ``ArrowAstropy`` if it does not exist.
    level : `int`, optional
        HTM level of the shards.

    Returns
    -------
    n_datasets : `int`
        Number of datasets written.

    Raises
    ------
    ValueError
        If the dataset type exists with another definition, the run already
        holds some of these shards, or the level has no dimension.
    StarCatalogError
        If ``table`` is not a usable star catalog.

    Notes
    -----
    If writing fails midway, everything this call wrote is removed (the run
    if it created it, otherwise the datasets it wrote, and the dataset type
    if it registered it) before the error is re-raised.
    """
    from lsst.daf.butler import DatasetType, MissingDatasetTypeError

    table = _normalize_star_table(table, "to ingest", allow_empty=True)
    dimension = f"htm{int(level)}"
    if dimension not in butler.dimensions.getStaticDimensions().names:
        raise ValueError(f"HTM level {level} has no dimension {dimension!r} in this repository")
    wanted = DatasetType(dataset_type, (dimension,), "ArrowAstropy", universe=butler.dimensions)
    try:
        existing = butler.get_dataset_type(dataset_type)
    except MissingDatasetTypeError:
        existing = None
    if existing is not None and existing != wanted:
        raise ValueError(
            f"dataset type {dataset_type!r} already exists as {existing}, not {wanted}; "
            "choose another dataset type name"
        )
    shards = shard_by_htm7(table, level=level)
    if not shards:
        return 0
    created_type = bool(butler.registry.registerDatasetType(wanted))
    try:
        created_run = bool(butler.registry.registerRun(run))
    except BaseException:
        _rollback(butler, run, False, [], dataset_type if created_type else None)
        raise
    if not (created_type or created_run):
        present = butler.query_datasets(wanted, collections=run, explain=False, limit=None)
        clash = sorted({int(ref.dataId[dimension]) for ref in present} & shards.keys())
        if clash:
            raise ValueError(
                f"run {run!r} already holds {dataset_type} for {len(clash)} of these trixels "
                f"({dimension} {clash[:5]}{'...' if len(clash) > 5 else ''}); write to a new run"
            )
    written: list = []
    try:
        for index, shard in shards.items():
            written.append(butler.put(shard, wanted, {dimension: index}, run=run))
    except BaseException:
        _rollback(butler, run, created_run, written, dataset_type if created_type else None)
        raise
    _LOG.info("Wrote %d %s datasets (%d stars) to run %s", len(written), dataset_type, len(table), run)
    return len(written)
