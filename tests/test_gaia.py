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

"""Tests of `lsst.trail_detect.simulation.gaia`: the Gaia archive client
(offline, through a recorded TAP answer), the star-count model against
real Gaia DR3 rows, catalog files, photometric transformations and the
Butler ingest.
"""

import http.client
import io
import json
import math
import os
import re
import shutil
import socket
import tempfile
import unittest
import urllib.parse
import warnings
from pathlib import Path
from unittest import mock

import astropy.units as u
import numpy as np
from astropy.coordinates import SkyCoord
from astropy.table import Table
from scipy import stats

import lsst.utils.tests
from lsst.trail_detect.simulation import gaia
from lsst.trail_detect.simulation.gaia import (
    STAR_COLUMNS,
    GaiaQueryError,
    GaiaUnavailableError,
    StarCatalogError,
    fetch_gaia_cone,
    gaia_to_band,
    galactic_star_density,
    ingest_star_catalog,
    read_star_catalog,
    shard_by_htm7,
    synthetic_gaia_catalog,
    write_star_catalog,
)

SHARED = Path(os.environ.get("TRAIL_DETECT_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FIXTURES = SHARED / "fixtures"
GAIA_FIXTURES = FIXTURES / "gaia"
TAP_RESPONSE = GAIA_FIXTURES / "gaia_dr3_tap_cone_response.json"
RANDOM_1000 = GAIA_FIXTURES / "gaia_dr3_random_1000.fits"
HAVE_FIXTURES = TAP_RESPONSE.is_file() and RANDOM_1000.is_file()
NO_FIXTURES = f"shared Gaia fixtures not found under {GAIA_FIXTURES} (set TRAIL_DETECT_SHARED)"

# Centre of the recorded cone search (all 50 rows lie within 0.03 deg).
REC_RA, REC_DEC = 280.0, -60.0


def _read_fixture_table(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", u.UnitsWarning)
        return Table.read(path)


def _floats(col):
    return np.ma.filled(np.ma.asarray(col, dtype=float), np.nan)


def _separation_deg(ra1, dec1, ra2, dec2):
    """Great-circle distance (haversine), degrees."""
    ra1, dec1, ra2, dec2 = (np.radians(np.asarray(v, dtype=float)) for v in (ra1, dec1, ra2, dec2))
    h = np.sin((dec2 - dec1) / 2) ** 2 + np.cos(dec1) * np.cos(dec2) * np.sin((ra2 - ra1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(h, 0, 1))))


class FakeGaiaArchive:
    """Stands in for gea.esac.esa.int below ``http.client``.

    Requests are formatted and responses parsed by the real
    ``http.client`` and astroquery code; only the socket is replaced. In
    ``verbatim`` mode a sync query gets the recorded answer byte for byte;
    in ``emulate`` mode the recorded rows are filtered by the query's
    CIRCLE, magnitude limit and TOP and cut to its SELECT list (and
    COUNT(*) is answered), like a TAP service over a tiny sky.
    """

    def __init__(self, recorded, mode="verbatim"):
        self.recorded = recorded
        self.document = json.loads(recorded)
        self.names = [m["name"] for m in self.document["metadata"]]
        self.i_ra, self.i_dec = self.names.index("ra"), self.names.index("dec")
        self.i_g = self.names.index("phot_g_mean_mag")
        self.mode = mode
        self.requests = []
        self.connects = 0
        self.connect_errors = []  # exceptions raised by the next connects
        self.repeat_last_error = False  # keep raising the last one
        self.status = None  # (code, body) to answer instead of data
        self.rows_served = 0

    def connect(self):
        self.connects += 1
        if self.connect_errors:
            error = self.connect_errors[0]
            if len(self.connect_errors) > 1 or not self.repeat_last_error:
                self.connect_errors = self.connect_errors[1:]
            raise error

    @property
    def queries(self):
        return [p["QUERY"] for m, path, p in self.requests if m == "POST" and path.endswith("/sync")]

    def respond(self, raw):
        head, _, body = raw.partition(b"\r\n\r\n")
        method, path, _ = head.decode("latin-1").split("\r\n")[0].split(" ", 2)
        params = dict(urllib.parse.parse_qsl(body.decode("latin-1")))
        self.requests.append((method, path, params))
        if not (method == "POST" and path == "/tap-server/tap/sync"):
            return self._http(404, b"not found", "text/plain")
        if self.status is not None:
            code, text = self.status
            return self._http(code, text.encode(), "text/xml")
        if self.mode == "verbatim":
            self.rows_served += len(self.document["data"])
            return self._http(200, self.recorded, "application/json")
        return self._http(200, json.dumps(self._emulate(params["QUERY"])).encode(), "application/json")

    def _emulate(self, query):
        circle = re.search(r"CIRCLE\('ICRS', ([-\d.]+), ([-\d.]+), ([-\d.]+)\)", query)
        ra0, dec0, radius = (float(v) for v in circle.groups())
        mag = float(re.search(r"phot_g_mean_mag < ([-\d.]+)", query).group(1))
        data = self.document["data"]
        ra = np.array([row[self.i_ra] for row in data])
        dec = np.array([row[self.i_dec] for row in data])
        g = np.array([np.nan if row[self.i_g] is None else row[self.i_g] for row in data])
        hit = (_separation_deg(ra0, dec0, ra, dec) < radius) & (g < mag)
        rows = [row for row, h in zip(data, hit) if h]
        if "COUNT(*)" in query:
            meta = [
                {
                    "name": "n",
                    "datatype": "long",
                    "xtype": None,
                    "arraysize": None,
                    "description": None,
                    "unit": None,
                    "ucd": None,
                    "utype": None,
                }
            ]
            return {"metadata": meta, "data": [[len(rows)]]}
        top = re.search(r"SELECT TOP (\d+)", query)
        if top:
            rows = rows[: int(top.group(1))]
        self.rows_served += len(rows)
        # Only the selected columns, as a TAP service answers.
        selected = re.search(r"SELECT TOP \d+ (.*?) FROM ", query).group(1).split(", ")
        index = [self.names.index(name) for name in selected]
        metadata = [self.document["metadata"][i] for i in index]
        return {"metadata": metadata, "data": [[row[i] for i in index] for row in rows]}

    @staticmethod
    def _http(code, payload, content_type):
        reason = http.client.responses.get(code, "Unknown")
        head = (
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        )
        return head.encode("latin-1") + payload


class _FakeSocket:
    def __init__(self, archive):
        self.archive = archive
        self.sent = bytearray()

    def sendall(self, data):
        self.sent += data

    def makefile(self, mode, *args, **kwargs):
        return io.BytesIO(self.archive.respond(bytes(self.sent)))

    def close(self):
        pass


def _patch_transport(archive):
    """Replace http.client's connections by ones wired to ``archive``."""

    class FakeConnection(http.client.HTTPConnection):
        def __init__(self, host, port=None, *args, **kwargs):
            super().__init__(host, port)

        def connect(self):
            archive.connect()
            self.sock = _FakeSocket(archive)

    return mock.patch.multiple(http.client, HTTPSConnection=FakeConnection, HTTPConnection=FakeConnection)


@unittest.skipUnless(HAVE_FIXTURES, NO_FIXTURES)
class GaiaFetchTestCase(lsst.utils.tests.TestCase):
    """fetch_gaia_cone through astroquery with the transport replaced."""

    @classmethod
    def setUpClass(cls):
        cls.recorded = TAP_RESPONSE.read_bytes()
        document = json.loads(cls.recorded)
        names = [m["name"] for m in document["metadata"]]
        cls.rec = {name: [row[i] for row in document["data"]] for i, name in enumerate(names)}

    def setUp(self):
        self.tmp = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def fetch(self, archive, *args, **kwargs):
        kwargs.setdefault("retry_wait", 0.0)
        with _patch_transport(archive):
            return fetch_gaia_cone(*args, **kwargs)

    def test_recorded_response(self):
        archive = FakeGaiaArchive(self.recorded)
        table = self.fetch(archive, REC_RA, REC_DEC, 0.05, 22.0)
        self.assertEqual(archive.connects, 1)
        self.assertEqual(len(archive.queries), 1)
        method, path, params = archive.requests[0]
        self.assertEqual((method, path), ("POST", "/tap-server/tap/sync"))
        self.assertEqual(params["FORMAT"], "json")
        self.assertEqual(params["LANG"], "ADQL")
        query = params["QUERY"]
        self.assertIn("FROM gaiadr3.gaia_source", query)
        self.assertIn(
            "CONTAINS(POINT('ICRS', ra, dec), CIRCLE('ICRS', 280.000000000, -60.000000000, 0.050000000)) = 1",
            query,
        )
        self.assertIn("phot_g_mean_mag < 22.0000", query)
        for column in STAR_COLUMNS:
            self.assertIn(column, query)

        self.assertEqual(table.colnames, list(STAR_COLUMNS))
        self.assertEqual(len(table), 50)
        self.assertEqual(table["source_id"].dtype, np.int64)
        self.assertEqual(table["ra"].dtype, np.float64)
        self.assertEqual(table["ra"].unit, u.deg)
        self.assertEqual(table["dec"].unit, u.deg)
        self.assertEqual(table["phot_g_mean_mag"].unit, u.mag)
        self.assertEqual(table["bp_rp"].unit, u.mag)
        self.assertEqual(table["pmra"].unit, u.mas / u.yr)
        self.assertEqual(table["pmdec"].unit, u.mas / u.yr)
        self.assertEqual(table["parallax"].unit, u.mas)
        # Values are the recorded ones, nulls become NaN.
        self.assertEqual(sorted(table["source_id"].tolist()), sorted(self.rec["source_id"]))
        self.assertTrue(np.all(np.diff(table["source_id"]) > 0))
        by_id = {sid: i for i, sid in enumerate(self.rec["source_id"])}
        rows = [by_id[sid] for sid in table["source_id"]]
        self.assertFloatsAlmostEqual(
            np.asarray(table["ra"]), np.array(self.rec["ra"])[rows], rtol=0, atol=1e-12
        )
        self.assertFloatsAlmostEqual(
            np.asarray(table["dec"]), np.array(self.rec["dec"])[rows], rtol=0, atol=1e-12
        )
        pmra = np.array([np.nan if v is None else v for v in self.rec["pmra"]])[rows]
        self.assertTrue(np.array_equal(np.isnan(table["pmra"]), np.isnan(pmra)))
        self.assertGreater(int(np.isnan(pmra).sum()), 0)
        self.assertFloatsAlmostEqual(
            np.asarray(table["pmra"])[~np.isnan(pmra)], pmra[~np.isnan(pmra)], rtol=1e-12
        )

    def test_cut_to_requested_cone(self):
        # The server answers with all 50 rows; only those inside the
        # requested cone and magnitude limit may come back.
        archive = FakeGaiaArchive(self.recorded)
        radius, mag_limit = 0.015, 20.5
        table = self.fetch(archive, REC_RA, REC_DEC, radius, mag_limit)
        sep = _separation_deg(REC_RA, REC_DEC, self.rec["ra"], self.rec["dec"])
        g = np.array([np.nan if v is None else v for v in self.rec["phot_g_mean_mag"]])
        expected = {sid for sid, s, m in zip(self.rec["source_id"], sep, g) if s <= radius and m < mag_limit}
        self.assertGreater(len(expected), 5)
        self.assertLess(len(expected), 45)
        self.assertEqual(set(table["source_id"].tolist()), expected)

    def test_cache_is_reused(self):
        archive = FakeGaiaArchive(self.recorded)
        first = self.fetch(archive, REC_RA, REC_DEC, 0.05, 22.0, cache_dir=self.tmp)
        self.assertEqual(archive.connects, 1)
        self.assertEqual(len(list(Path(self.tmp).glob("*.ecsv"))), 1)
        # Second call: no transport at all, even with the network gone.
        archive.connect_errors = [socket.gaierror(-2, "Name or service not known")]
        archive.repeat_last_error = True
        second = self.fetch(archive, REC_RA, REC_DEC, 0.05, 22.0, cache_dir=self.tmp)
        self.assertEqual(archive.connects, 1)
        self.assertEqual(len(archive.requests), 1)
        for name in STAR_COLUMNS:
            self.assertTrue(np.array_equal(np.asarray(first[name]), np.asarray(second[name]), equal_nan=True))
            self.assertEqual(first[name].unit, second[name].unit)
        # Another cone is another query: it needs the network.
        with self.assertRaises(GaiaUnavailableError):
            self.fetch(archive, REC_RA, REC_DEC, 0.04, 22.0, cache_dir=self.tmp, retries=0)

    def test_chunks_cover_and_deduplicate(self):
        archive = FakeGaiaArchive(self.recorded, mode="emulate")
        radius = 0.025
        table = self.fetch(archive, REC_RA, REC_DEC, radius, 22.0, chunk_radius=0.008)
        queries = archive.queries
        self.assertGreater(len(queries), 7)
        for query in queries:
            if "COUNT(*)" not in query:
                self.assertIn(", 0.008000000)) = 1", query)
        sep = _separation_deg(REC_RA, REC_DEC, self.rec["ra"], self.rec["dec"])
        expected = {sid for sid, s in zip(self.rec["source_id"], sep) if s <= radius}
        self.assertGreater(len(expected), 30)
        self.assertEqual(sorted(table["source_id"].tolist()), sorted(expected))
        # Overlapping chunks returned some stars more than once.
        self.assertGreater(archive.rows_served, len(expected))

    def test_empty_cone(self):
        # astroquery cannot parse an empty JSON answer; the client tells an
        # empty cone from an error with COUNT(*).
        archive = FakeGaiaArchive(self.recorded, mode="emulate")
        table = self.fetch(archive, REC_RA + 1.0, REC_DEC, 0.01, 22.0)
        self.assertEqual(len(table), 0)
        self.assertEqual(table.colnames, list(STAR_COLUMNS))
        self.assertEqual(table["ra"].unit, u.deg)
        self.assertEqual(len(archive.queries), 2)
        self.assertIn("SELECT TOP 1 COUNT(*) AS n FROM gaiadr3.gaia_source WHERE", archive.queries[1])
        self.assertIn("CIRCLE('ICRS', 281.000000000, -60.000000000, 0.010000000)", archive.queries[1])

    def test_truncated_chunks_are_split(self):
        # A model that expects an empty sky makes one query for the whole
        # cone, which TOP truncates; the client must split it until no
        # answer is truncated.
        archive = FakeGaiaArchive(self.recorded, mode="emulate")
        with mock.patch.object(gaia, "galactic_star_density", return_value=np.array(1.0)):
            table = self.fetch(archive, REC_RA, REC_DEC, 0.03, 22.0, max_rows=10)
        sep = _separation_deg(REC_RA, REC_DEC, self.rec["ra"], self.rec["dec"])
        expected = {sid for sid, s in zip(self.rec["source_id"], sep) if s <= 0.03}
        self.assertEqual(sorted(table["source_id"].tolist()), sorted(expected))
        self.assertIn("SELECT TOP 10 ", archive.queries[0])
        self.assertIn(", 0.030000000)) = 1", archive.queries[0])
        self.assertGreater(len(archive.queries), 5)

    def test_unreachable_archive(self):
        archive = FakeGaiaArchive(self.recorded)
        archive.connect_errors = [socket.gaierror(-2, "Name or service not known")]
        archive.repeat_last_error = True
        with self.assertRaises(GaiaUnavailableError) as ctx:
            self.fetch(archive, REC_RA, REC_DEC, 0.05, 22.0, retries=2)
        self.assertEqual(archive.connects, 3)
        message = str(ctx.exception)
        self.assertNotIn("\n", message)
        self.assertLess(len(message), 500)
        self.assertIn("unreachable", message)
        self.assertIn("gea.esac.esa.int", message)
        self.assertIn("--catalog synthetic", message)
        self.assertIn("3 attempt", message)
        self.assertIsInstance(ctx.exception.__cause__, socket.gaierror)

    def test_transient_errors_are_retried(self):
        archive = FakeGaiaArchive(self.recorded)
        archive.connect_errors = [ConnectionResetError("reset"), ConnectionRefusedError("refused")]
        table = self.fetch(archive, REC_RA, REC_DEC, 0.05, 22.0, retries=2)
        self.assertEqual(archive.connects, 3)
        self.assertEqual(len(table), 50)

    def test_http_errors(self):
        votable_error = (
            '<?xml version="1.0"?><VOTABLE><RESOURCE type="results">'
            '<INFO name="QUERY_STATUS" value="ERROR">{}</INFO></RESOURCE></VOTABLE>'
        )
        archive = FakeGaiaArchive(self.recorded)
        archive.status = (500, votable_error.format("Service busy"))
        with self.assertRaises(GaiaUnavailableError) as ctx:
            self.fetch(archive, REC_RA, REC_DEC, 0.05, 22.0, retries=1)
        self.assertEqual(archive.connects, 2)
        self.assertIn("did not answer", str(ctx.exception))
        archive = FakeGaiaArchive(self.recorded)
        archive.status = (400, votable_error.format("Incorrect ADQL query"))
        with self.assertRaises(GaiaQueryError) as ctx:
            self.fetch(archive, REC_RA, REC_DEC, 0.05, 22.0, retries=3)
        self.assertEqual(archive.connects, 1)  # a rejected query is not retried
        self.assertIn("Incorrect ADQL query", str(ctx.exception))

    def test_invalid_arguments(self):
        archive = FakeGaiaArchive(self.recorded)
        for args, word in [
            ((10.0, 0.0, 0.0, 20.0), "radius"),
            ((10.0, 0.0, -1.0, 20.0), "radius"),
            ((10.0, 91.0, 0.1, 20.0), "dec"),
            ((10.0, -90.5, 0.1, 20.0), "dec"),
            ((float("nan"), 0.0, 0.1, 20.0), "ra"),
        ]:
            with self.assertRaisesRegex(ValueError, word):
                self.fetch(archive, *args)
        with self.assertRaisesRegex(ValueError, "chunk_radius"):
            self.fetch(archive, 10.0, 0.0, 0.1, 20.0, chunk_radius=0.0)
        self.assertEqual(archive.connects, 0)


class CoverCapTestCase(lsst.utils.tests.TestCase):
    """The chunk grid covers the whole cone."""

    def test_cover(self):
        rng = np.random.default_rng(5)
        cases = [
            (280.0, -60.0, 2.0, 0.5),
            (10.0, 89.5, 3.0, 0.4),
            (200.0, 0.0, 60.0, 7.0),
            (33.0, -20.0, 180.0, 20.0),
            (1.0, 1.0, 0.3, 0.5),
        ]
        for ra, dec, radius, chunk in cases:
            centres = np.array(gaia._cover_cap(ra, dec, radius, chunk))
            # Random points on the cap (uniform in cos theta).
            n = 4000
            theta = np.arccos(1 - (1 - math.cos(math.radians(radius))) * rng.random(n))
            phi = rng.uniform(0, 2 * math.pi, n)
            c = SkyCoord(ra, dec, unit="deg")
            pts = c.directional_offset_by(phi * u.rad, theta * u.rad)
            grid = SkyCoord(centres[:, 0], centres[:, 1], unit="deg")
            _, sep, _ = pts.match_to_catalog_sky(grid)
            chunk_r = radius if len(centres) == 1 else chunk
            self.assertLessEqual(sep.deg.max(), chunk_r, msg=f"{ra} {dec} {radius} {chunk}")
            if len(centres) > 1:
                # Not wasteful: within a factor 2 of the ideal hexagonal count.
                cap = 2 * math.pi * (1 - math.cos(math.radians(radius)))
                hexagon = 1.5 * math.sqrt(3) * math.radians(chunk) ** 2
                self.assertLess(len(centres), 2.2 * cap / hexagon + 12)


@unittest.skipUnless(HAVE_FIXTURES, NO_FIXTURES)
class StarCountModelTestCase(lsst.utils.tests.TestCase):
    """galactic_star_density against 1000 random Gaia DR3 sources."""

    @classmethod
    def setUpClass(cls):
        table = _read_fixture_table(RANDOM_1000)
        cls.fixture = table
        cls.g = _floats(table["phot_g_mean_mag"])
        gal = SkyCoord(_floats(table["ra"]), _floats(table["dec"]), unit="deg").galactic
        cls.l_deg, cls.b_deg = gal.l.deg, gal.b.deg
        # Model on an equal-area grid: uniform in z = sin b and in l.
        nz, nl = 1200, 360
        z = (np.arange(nz) + 0.5) / nz * 2 - 1
        lon = (np.arange(nl) + 0.5) / nl * 360.0
        cls.grid_z = z
        cls.grid_l = lon
        b = np.degrees(np.arcsin(z))
        dens = galactic_star_density(
            b[:, None], 21.0, lon[None, :], gaia_selection=True
        ) - galactic_star_density(b[:, None], 11.5, lon[None, :], gaia_selection=True)
        cls.grid_density = dens
        cls.cell_deg2 = (2.0 / nz) * (2 * math.pi / nl) * (180 / math.pi) ** 2

    def test_all_sky_total(self):
        # The fixture is the first 1220 values of the archive's random_index
        # (a random permutation of all 1.81e9 sources) with 11.5 < G < 21.
        n_drawn = int(np.max(self.fixture["random_index"])) + 1
        expected = gaia.GAIA_DR3_N_SOURCES * len(self.fixture) / n_drawn
        total = self.grid_density.sum() * self.cell_deg2
        self.assertFloatsAlmostEqual(total, expected, rtol=0.01)
        self.assertGreater(total, 1.3e9)
        self.assertLess(total, 1.7e9)

    def test_magnitude_distribution(self):
        grid = np.linspace(11.5, 21.0, 400)
        cum = galactic_star_density(45.0, grid, 0.0, gaia_selection=True)
        cdf = (cum - cum[0]) / (cum[-1] - cum[0])
        result = stats.kstest(self.g, lambda x: np.interp(x, grid, cdf))
        self.assertGreater(result.pvalue, 0.01, msg=str(result))
        # Counts rise steeply: half of the sources are fainter than ~19.3.
        self.assertFloatsAlmostEqual(np.interp(0.5, cdf, grid), np.median(self.g), atol=0.25)

    def test_latitude_distribution(self):
        per_z = self.grid_density.sum(axis=1)
        z = np.abs(self.grid_z)
        order = np.argsort(z)
        cdf = np.cumsum(per_z[order]) / per_z.sum()
        z_data = np.abs(np.sin(np.radians(self.b_deg)))
        result = stats.kstest(z_data, lambda x: np.interp(x, z[order], cdf))
        self.assertGreater(result.pvalue, 0.01, msg=str(result))
        # Binned: fractions within |sin b| bands agree within 3 sigma.
        n = len(z_data)
        for lo, hi in [(0, 0.05), (0.05, 0.1), (0.1, 0.2), (0.2, 0.4), (0.4, 0.7), (0.7, 1.0)]:
            model = per_z[(z >= lo) & (z < hi)].sum() / per_z.sum()
            data = np.mean((z_data >= lo) & (z_data < hi))
            sigma = math.sqrt(model * (1 - model) / n)
            self.assertLess(abs(data - model), 3 * sigma + 0.005, msg=f"{lo}-{hi}: {data} vs {model}")

    def test_longitude_concentration(self):
        # Near the plane the inner Galaxy dominates.
        plane = np.abs(self.b_deg) < 10
        l_wrap = (self.l_deg + 180) % 360 - 180
        data = np.mean(np.abs(l_wrap[plane]) < 45)
        b_grid = np.degrees(np.arcsin(self.grid_z))
        near = np.abs(b_grid) < 10
        lw = (self.grid_l + 180) % 360 - 180
        dens = self.grid_density[near]
        model = dens[:, np.abs(lw) < 45].sum() / dens.sum()
        sigma = math.sqrt(model * (1 - model) / plane.sum())
        self.assertLess(abs(data - model), 3 * sigma)
        self.assertGreater(model, 0.4)  # 1/4 of longitudes, > 40% of stars

    def test_physical_shape(self):
        pole = galactic_star_density(90.0, 21.0)
        b30 = galactic_star_density(30.0, 21.0)
        b5_out = galactic_star_density(5.0, 21.0, 180.0)
        self.assertTrue(1500 < pole < 8000, pole)
        self.assertTrue(pole < b30 < 20000, b30)
        self.assertGreater(b5_out, 30000)
        self.assertGreater(galactic_star_density(5.0, 21.0, 0.0), 5 * b5_out)
        # Symmetric in b, falling away from the plane (outside the dust),
        # flat at high latitude where the halo dominates.
        lats = np.array([3.0, 5.0, 10.0, 20.0, 40.0, 60.0, 89.0])
        dens = galactic_star_density(lats, 21.0, 120.0)
        self.assertTrue(np.all(np.diff(dens[:5]) < 0))
        self.assertFloatsAlmostEqual(dens[-1], dens[-2], rtol=0.15)
        self.assertFloatsAlmostEqual(galactic_star_density(-lats, 21.0, 120.0), dens, rtol=1e-12)
        # Longitude average and scalar/array agreement.
        mean_l = np.mean([galactic_star_density(30.0, 21.0, lon) for lon in np.arange(360) + 0.5])
        self.assertFloatsAlmostEqual(b30, mean_l, rtol=1e-9)
        self.assertIsInstance(b30, float)
        # Brighter limits: fewer stars; about 5000 stars brighter than
        # G = 6 over the whole sky, as in the real sky.
        self.assertLess(galactic_star_density(30.0, 18.0), 0.3 * b30)
        n6 = self.all_sky(6.0)
        self.assertTrue(2000 < n6 < 12000, n6)
        # Gaia's completeness only matters near its faint limit.
        self.assertFloatsAlmostEqual(
            galactic_star_density(30.0, 18.0, gaia_selection=True),
            galactic_star_density(30.0, 18.0),
            rtol=0.01,
        )
        self.assertLess(galactic_star_density(30.0, 23.0, gaia_selection=True), 1.05 * b30)
        self.assertGreater(galactic_star_density(30.0, 25.0), 2 * b30)

    def all_sky(self, mag):
        b = np.degrees(np.arcsin(self.grid_z))
        dens = galactic_star_density(b[:, None], mag, self.grid_l[None, :])
        return dens.sum() * self.cell_deg2

    def test_gaia_source_id_convention(self):
        # Synthetic ids follow Gaia's: source_id // 2^35 is the HEALPix
        # level-12 nested pixel; check the convention on the real rows.
        import hpgeom

        ra, dec = _floats(self.fixture["ra"]), _floats(self.fixture["dec"])
        pix = hpgeom.angle_to_pixel(4096, ra, dec)
        self.assertGreater(np.mean(np.asarray(self.fixture["source_id"]) // 2**35 == pix), 0.98)
        cat = synthetic_gaia_catalog(45.0, 30.0, 0.3, 19.0, seed=2)
        pix = hpgeom.angle_to_pixel(4096, np.asarray(cat["ra"]), np.asarray(cat["dec"]))
        self.assertTrue(np.array_equal(np.asarray(cat["source_id"]) // 2**35, pix))

    def test_colours_and_kinematics(self):
        # Colours: synthetic stars at high latitude against the fixture's.
        z_data = np.abs(np.sin(np.radians(self.b_deg)))
        bp_rp = _floats(self.fixture["bp_rp"])
        high = (z_data > 0.3) & np.isfinite(bp_rp)
        cat = synthetic_gaia_catalog(200.0, 30.0, 1.0, 21.0, seed=4, mag_bright=11.5)  # b ~ +80
        colour = np.asarray(cat["bp_rp"])
        self.assertGreater(stats.ks_2samp(colour[np.isfinite(colour)], bp_rp[high]).pvalue, 0.001)
        missing_model = np.mean(np.isnan(colour[np.asarray(cat["phot_g_mean_mag"]) > 19.5]))
        missing_data = np.mean(np.isnan(bp_rp[self.g > 19.5]))
        self.assertFloatsAlmostEqual(missing_model, missing_data, atol=0.05)
        # Kinematics: the fixture's positions and magnitudes through the
        # model give its proper-motion and parallax distributions.
        rng = np.random.default_rng(8)
        ra, dec = _floats(self.fixture["ra"]), _floats(self.fixture["dec"])
        pmra, pmdec, plx = (
            np.concatenate(v)
            for v in zip(*[gaia._synthetic_kinematics(rng, ra, dec, self.g) for _ in range(4)])
        )
        for name, model in [("pmra", pmra), ("pmdec", pmdec), ("parallax", plx)]:
            data = _floats(self.fixture[name])
            data = data[np.isfinite(data)]
            self.assertLess(stats.ks_2samp(data, model).statistic, 0.1, msg=name)
            self.assertFloatsAlmostEqual(np.median(model), np.median(data), atol=0.6, msg=name)
        self.assertFloatsAlmostEqual(
            np.median(np.hypot(pmra, pmdec)),
            np.median(np.hypot(_floats(self.fixture["pmra"]), _floats(self.fixture["pmdec"]))),
            rtol=0.25,
        )


class SyntheticCatalogTestCase(lsst.utils.tests.TestCase):
    """The synthetic catalog is a Poisson draw of the model."""

    def expected_count(self, ra, dec, radius, mag_limit, mag_bright, n=400000, seed=99):
        """Monte Carlo integral of the model density over a cap."""
        rng = np.random.default_rng(seed)
        theta = np.arccos(1 - (1 - math.cos(math.radians(radius))) * rng.random(n))
        pts = SkyCoord(ra, dec, unit="deg").directional_offset_by(
            rng.uniform(0, 2 * math.pi, n) * u.rad, theta * u.rad
        )
        gal = pts.galactic
        dens = galactic_star_density(
            gal.b.deg, mag_limit, gal.l.deg, gaia_selection=True
        ) - galactic_star_density(gal.b.deg, mag_bright, gal.l.deg, gaia_selection=True)
        area = 2 * math.pi * (1 - math.cos(math.radians(radius))) * (180 / math.pi) ** 2
        return dens.mean() * area, pts, dens

    def test_counts_match_density(self):
        ra, dec, radius, mag_limit = 150.0, 2.0, 0.7, 21.0  # b = +42
        cat = synthetic_gaia_catalog(ra, dec, radius, mag_limit, seed=11)
        gal = SkyCoord(ra, dec, unit="deg").galactic
        area = 2 * math.pi * (1 - math.cos(math.radians(radius))) * (180 / math.pi) ** 2
        expected = (
            galactic_star_density(gal.b.deg, mag_limit, gal.l.deg, gaia_selection=True)
            - galactic_star_density(gal.b.deg, 10.0, gal.l.deg, gaia_selection=True)
        ) * area
        self.assertGreater(expected, 3000)
        self.assertLess(
            abs(len(cat) - expected),
            4 * math.sqrt(expected) + 0.01 * expected,
            msg=f"{len(cat)} vs {expected}",
        )
        # Inside the cone and the magnitude range.
        sep = _separation_deg(ra, dec, np.asarray(cat["ra"]), np.asarray(cat["dec"]))
        self.assertLessEqual(sep.max(), radius + 1e-9)
        g = np.asarray(cat["phot_g_mean_mag"])
        self.assertTrue(np.all((g >= 10.0) & (g < mag_limit)))
        # Uniform on the cap: the fraction within half the radius.
        inner = np.mean(sep < radius / 2)
        frac = (1 - math.cos(math.radians(radius / 2))) / (1 - math.cos(math.radians(radius)))
        self.assertLess(abs(inner - frac), 4 * math.sqrt(frac * (1 - frac) / len(cat)))
        # Magnitudes follow the model's distribution.
        grid = np.linspace(10.0, mag_limit, 300)
        cum = galactic_star_density(gal.b.deg, grid, gal.l.deg, gaia_selection=True)
        cdf = (cum - cum[0]) / (cum[-1] - cum[0])
        self.assertGreater(stats.kstest(g, lambda x: np.interp(x, grid, cdf)).pvalue, 0.01)

    def test_gradient_across_a_large_cone(self):
        # A cone from b = 2 to b = 18 deg: counts per latitude band follow
        # the model, including the steep rise towards the plane.
        centre = SkyCoord(l=100.0, b=10.0, unit="deg", frame="galactic").icrs
        ra, dec = float(centre.ra.deg), float(centre.dec.deg)
        radius, mag_limit, mag_bright = 8.0, 13.0, 8.0
        cat = synthetic_gaia_catalog(ra, dec, radius, mag_limit, seed=3, mag_bright=mag_bright)
        total, pts, dens = self.expected_count(ra, dec, radius, mag_limit, mag_bright)
        self.assertLess(abs(len(cat) - total), 4 * math.sqrt(total) + 0.01 * total)
        b_cat = SkyCoord(np.asarray(cat["ra"]), np.asarray(cat["dec"]), unit="deg").galactic.b.deg
        b_pts = pts.galactic.b.deg
        counts = []
        for lo, hi in [(2, 6), (6, 10), (10, 14), (14, 18)]:
            model = total * dens[(b_pts >= lo) & (b_pts < hi)].sum() / dens.sum()
            data = np.sum((b_cat >= lo) & (b_cat < hi))
            counts.append(data)
            self.assertLess(abs(data - model), 4 * math.sqrt(model) + 0.02 * model, msg=f"{lo}-{hi}")
        self.assertGreater(counts[0], 2 * counts[-1])

    def test_deterministic(self):
        a = synthetic_gaia_catalog(10.0, -30.0, 0.4, 20.0, seed=7)
        b = synthetic_gaia_catalog(10.0, -30.0, 0.4, 20.0, seed=7)
        c = synthetic_gaia_catalog(10.0, -30.0, 0.4, 20.0, seed=8)
        self.assertEqual(a.colnames, list(STAR_COLUMNS))
        for name in STAR_COLUMNS:
            self.assertTrue(np.array_equal(np.asarray(a[name]), np.asarray(b[name]), equal_nan=True))
        self.assertFalse(len(a) == len(c) and np.array_equal(np.asarray(a["ra"]), np.asarray(c["ra"])))
        self.assertEqual(len(np.unique(a["source_id"])), len(a))
        self.assertEqual(a["source_id"].dtype, np.int64)
        self.assertEqual(a["ra"].unit, u.deg)
        self.assertEqual(a["pmra"].unit, u.mas / u.yr)
        self.assertEqual(a["parallax"].unit, u.mas)
        self.assertTrue(np.all(np.isfinite(a["pmra"])))
        self.assertLess(np.median(np.hypot(a["pmra"], a["pmdec"])), 20.0)

    def test_pole_and_whole_sky(self):
        cat = synthetic_gaia_catalog(123.0, 90.0, 2.0, 17.0, seed=1)
        self.assertTrue(np.all(np.asarray(cat["dec"]) >= 88.0 - 1e-9))
        sky = synthetic_gaia_catalog(0.0, 0.0, 180.0, 8.5, seed=1, mag_bright=4.0)
        gal = SkyCoord(np.asarray(sky["ra"]), np.asarray(sky["dec"]), unit="deg").galactic
        area = 4 * math.pi * (180 / math.pi) ** 2
        b = np.degrees(np.arcsin((np.arange(600) + 0.5) / 600 * 2 - 1))
        lon = np.arange(180) * 2.0 + 1.0
        dens = galactic_star_density(
            b[:, None], 8.5, lon[None, :], gaia_selection=True
        ) - galactic_star_density(b[:, None], 4.0, lon[None, :], gaia_selection=True)
        expected = dens.mean() * area
        self.assertLess(abs(len(sky) - expected), 4 * math.sqrt(expected) + 0.01 * expected)
        # Both hemispheres of the whole sky, concentrated to the plane.
        self.assertGreater(np.mean(np.abs(gal.b.deg) < 20), 0.4)
        self.assertAlmostEqual(np.mean(gal.b.deg > 0), 0.5, delta=0.05)

    def test_invalid(self):
        with self.assertRaisesRegex(ValueError, "radius"):
            synthetic_gaia_catalog(0.0, 0.0, 0.0, 20.0, seed=1)
        with self.assertRaisesRegex(ValueError, "dec"):
            synthetic_gaia_catalog(0.0, 95.0, 1.0, 20.0, seed=1)
        with self.assertRaisesRegex(ValueError, "mag_bright"):
            synthetic_gaia_catalog(0.0, 0.0, 1.0, 9.0, seed=1)
        with self.assertRaisesRegex(ValueError, "max_stars"):
            synthetic_gaia_catalog(266.4, -29.0, 20.0, 21.0, seed=1)


class StarCatalogFileTestCase(lsst.utils.tests.TestCase):
    """read_star_catalog / write_star_catalog."""

    def setUp(self):
        self.tmp = Path(tempfile.mkdtemp())
        self.cat = synthetic_gaia_catalog(60.0, -20.0, 0.2, 19.5, seed=5)
        self.assertGreater(len(self.cat), 50)

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def assertSameCatalog(self, a, b, atol=0.0):
        self.assertEqual(a.colnames, list(STAR_COLUMNS))
        self.assertEqual(len(a), len(b))
        self.assertTrue(np.array_equal(np.asarray(a["source_id"]), np.asarray(b["source_id"])))
        for name in STAR_COLUMNS[1:]:
            x, y = np.asarray(a[name], dtype=float), np.asarray(b[name], dtype=float)
            self.assertTrue(np.array_equal(np.isnan(x), np.isnan(y)), msg=name)
            self.assertFloatsAlmostEqual(
                x[~np.isnan(x)], y[~np.isnan(y)], rtol=0, atol=atol + 1e-12, msg=name
            )
            self.assertEqual(a[name].unit, _expected_unit(name), msg=name)

    def test_round_trip(self):
        for ext, atol in [(".fits", 0.0), (".ecsv", 0.0), (".parquet", 0.0), (".csv", 1e-9)]:
            path = self.tmp / f"stars{ext}"
            self.assertEqual(write_star_catalog(self.cat, path), path)
            back = read_star_catalog(path)
            self.assertSameCatalog(back, self.cat, atol=atol)

    def test_overwrite(self):
        path = self.tmp / "stars.fits"
        write_star_catalog(self.cat, path)
        with self.assertRaisesRegex(FileExistsError, "already exists"):
            write_star_catalog(self.cat[:10], path)
        self.assertEqual(len(read_star_catalog(path)), len(self.cat))
        write_star_catalog(self.cat[:10], path, overwrite=True)
        self.assertEqual(len(read_star_catalog(path)), 10)
        with self.assertRaisesRegex(StarCatalogError, "unsupported file extension"):
            write_star_catalog(self.cat, self.tmp / "stars.txt")

    def test_aliases(self):
        n = len(self.cat)
        vizier = Table(
            {
                "Source": np.asarray(self.cat["source_id"]),
                "RA_ICRS": np.asarray(self.cat["ra"]) * u.deg,
                "DE_ICRS": np.asarray(self.cat["dec"]) * u.deg,
                "Gmag": np.asarray(self.cat["phot_g_mean_mag"]) * u.mag,
                "BP-RP": np.asarray(self.cat["bp_rp"]) * u.mag,
                "pmRA": np.asarray(self.cat["pmra"]) * u.mas / u.yr,
                "pmDE": np.asarray(self.cat["pmdec"]) * u.mas / u.yr,
                "Plx": np.asarray(self.cat["parallax"]) * u.mas,
            }
        )
        vizier.write(self.tmp / "vizier.fits")
        self.assertSameCatalog(read_star_catalog(self.tmp / "vizier.fits"), self.cat)
        # LSST style: radians with a unit, pm in arcsec/yr, minimal columns.
        lsst = Table(
            {
                "coord_ra": np.radians(np.asarray(self.cat["ra"])) * u.rad,
                "coord_dec": np.radians(np.asarray(self.cat["dec"])) * u.rad,
                "mag": np.asarray(self.cat["phot_g_mean_mag"]),
                "pmra": np.asarray(self.cat["pmra"]) / 1000.0 * u.arcsec / u.yr,
            }
        )
        lsst.write(self.tmp / "lsst.ecsv")
        back = read_star_catalog(self.tmp / "lsst.ecsv")
        self.assertFloatsAlmostEqual(np.asarray(back["ra"]), np.asarray(self.cat["ra"]), rtol=0, atol=1e-10)
        self.assertFloatsAlmostEqual(np.asarray(back["dec"]), np.asarray(self.cat["dec"]), rtol=0, atol=1e-10)
        self.assertFloatsAlmostEqual(np.asarray(back["pmra"]), np.asarray(self.cat["pmra"]), rtol=1e-12)
        self.assertTrue(np.array_equal(np.asarray(back["source_id"]), np.arange(n)))
        self.assertTrue(np.all(np.isnan(back["bp_rp"])) and np.all(np.isnan(back["parallax"])))
        # Negative RA wraps into [0, 360).
        wrapped = Table({"ra": [-10.0, 370.0], "dec": [0.0, 1.0], "G": [15.0, 16.0]})
        wrapped.write(self.tmp / "wrap.csv")
        self.assertFloatsAlmostEqual(
            np.asarray(read_star_catalog(self.tmp / "wrap.csv")["ra"]), np.array([350.0, 10.0]), atol=1e-12
        )

    def test_errors(self):
        missing = self.tmp / "nothere.fits"
        with self.assertRaisesRegex(StarCatalogError, "cannot read star catalog .*nothere.fits: no such"):
            read_star_catalog(missing)
        garbage = self.tmp / "garbage.fits"
        garbage.write_bytes(np.random.default_rng(1).bytes(5000))
        with self.assertRaisesRegex(StarCatalogError, "cannot read star catalog .*garbage.fits"):
            read_star_catalog(garbage)
        noradec = self.tmp / "noradec.ecsv"
        Table({"x": [1.0, 2.0], "y": [3.0, 4.0], "flux": [5.0, 6.0]}).write(noradec)
        with self.assertRaises(StarCatalogError) as ctx:
            read_star_catalog(noradec)
        message = str(ctx.exception)
        self.assertIn("noradec.ecsv", message)
        self.assertIn("Columns found: x, y, flux", message)
        self.assertIn("ra", message)
        nomag = self.tmp / "nomag.csv"
        Table({"ra": [1.0], "dec": [2.0], "r_flux": [3.0]}).write(nomag)
        with self.assertRaisesRegex(StarCatalogError, "phot_g_mean_mag.*Columns found: ra, dec, r_flux"):
            read_star_catalog(nomag)
        empty = self.tmp / "empty.fits"
        Table(self.cat[:0], meta={}).write(empty)
        with self.assertRaisesRegex(StarCatalogError, "empty.fits has no rows"):
            read_star_catalog(empty)
        nan = self.tmp / "nan.ecsv"
        Table({"ra": [1.0, np.nan], "dec": [2.0, 3.0], "G": [15.0, 16.0]}).write(nan)
        with self.assertRaisesRegex(StarCatalogError, "non-finite ra/dec"):
            read_star_catalog(nan)
        with self.assertRaisesRegex(StarCatalogError, "unsupported file extension"):
            read_star_catalog(Path(__file__))


def _expected_unit(name):
    return {
        "ra": u.deg,
        "dec": u.deg,
        "phot_g_mean_mag": u.mag,
        "bp_rp": u.mag,
        "pmra": u.mas / u.yr,
        "pmdec": u.mas / u.yr,
        "parallax": u.mas,
    }[name]


class GaiaToBandTestCase(lsst.utils.tests.TestCase):
    """Photometric transformations."""

    def test_published_relation(self):
        x = 0.82
        # Riello et al. (2021) G - r polynomial, evaluated by hand.
        g_minus_r = -0.09837 + 0.08592 * x + 0.1907 * x**2 - 0.1701 * x**3 + 0.02263 * x**4
        self.assertFloatsAlmostEqual(float(gaia_to_band(15.0, x, "r")), 15.0 - g_minus_r, atol=1e-12)
        # r - G = -0.017 for a solar-colour star: r is slightly brighter.
        self.assertFloatsAlmostEqual(float(gaia_to_band(15.0, x, "r")) - 15.0, -0.0168, atol=0.002)

    def test_sun(self):
        # The Sun: G = 4.67, BP - RP = 0.82 (Casagrande & VandenBerg 2018);
        # SDSS AB absolute magnitudes (Willmer 2018): u 6.39, g 5.11,
        # r 4.65, i 4.53, z 4.50.
        sun = {b: float(gaia_to_band(4.67, 0.82, b)) for b in "ugrizy"}
        for band, value, tol in [
            ("u", 6.39, 0.15),
            ("g", 5.11, 0.08),
            ("r", 4.65, 0.05),
            ("i", 4.53, 0.05),
            ("z", 4.50, 0.08),
        ]:
            self.assertFloatsAlmostEqual(sun[band], value, atol=tol, msg=band)
        self.assertLess(abs(sun["z"] - sun["y"]), 0.1)

    def test_colours(self):
        bp_rp = np.array([0.5, 0.82, 1.2, 2.0, 2.8])
        mags = {b: gaia_to_band(np.full(5, 18.0), bp_rp, b) for b in "ugrizy"}
        # Redder BP - RP means redder in every SDSS colour.
        for blue, red in ["gr", "ri", "iz", "zy"]:
            self.assertTrue(np.all(np.diff(mags[blue] - mags[red]) > 0), msg=blue + red)
        self.assertTrue(np.all(np.diff(mags["u"] - mags["g"]) >= 0))
        self.assertGreater(mags["u"][-1] - mags["g"][-1], mags["u"][0] - mags["g"][0] + 0.8)
        # An M0 dwarf (BP - RP = 2): g - r about 1.45, r - i about 0.75.
        self.assertFloatsAlmostEqual(mags["g"][3] - mags["r"][3], 1.45, atol=0.15)
        self.assertFloatsAlmostEqual(mags["r"][3] - mags["i"][3], 0.75, atol=0.15)
        # Missing colour: BP - RP = 0.8.
        self.assertFloatsAlmostEqual(
            gaia_to_band([17.0, 17.0], [np.nan, 0.8], "g"),
            np.full(2, float(gaia_to_band(17.0, 0.8, "g"))),
            atol=0,
        )
        # Far outside the fitted colour range the result stays sane.
        extreme = gaia_to_band(np.array([18.0, 18.0]), np.array([-1.0, 6.0]), "i")
        self.assertTrue(np.all(np.abs(extreme - 18.0) < 3.0))
        with self.assertRaisesRegex(ValueError, "unknown band"):
            gaia_to_band(18.0, 1.0, "V")


class ButlerIngestTestCase(lsst.utils.tests.TestCase):
    """shard_by_htm7 and ingest_star_catalog with a real repository."""

    @classmethod
    def setUpClass(cls):
        cls.cat = synthetic_gaia_catalog(150.0, 2.0, 0.8, 18.0, seed=21)
        cls.cat.meta["mag_limit"] = 18.0

    def setUp(self):
        from lsst.daf.butler import Butler

        self.root = tempfile.mkdtemp()
        Butler.makeRepo(self.root)
        self.butler = Butler.from_config(self.root, writeable=True)

    def tearDown(self):
        self.butler.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def test_shards(self):
        import lsst.sphgeom as sphgeom

        shards = shard_by_htm7(self.cat)
        self.assertGreater(len(shards), 4)
        self.assertEqual(sum(len(t) for t in shards.values()), len(self.cat))
        self.assertEqual(list(shards), sorted(shards))
        pixelization = sphgeom.HtmPixelization(7)
        for index, shard in shards.items():
            self.assertEqual(pixelization.level(index), 7)
            region = pixelization.pixel(index)
            for ra, dec in zip(shard["ra"], shard["dec"]):
                self.assertTrue(region.contains(sphgeom.UnitVector3d(sphgeom.LonLat.fromDegrees(ra, dec))))
        self.assertEqual(shard_by_htm7(self.cat[:0]), {})
        # Trixels of level 7 are about half a degree across.
        radii = [pixelization.pixel(i).getBoundingCircle().getOpeningAngle().asDegrees() for i in shards]
        self.assertTrue(all(0.2 < r < 0.6 for r in radii), radii)

    def test_ingest_and_read_back(self):
        run = "refcats/gaia_test"
        n = ingest_star_catalog(self.butler, self.cat, run=run)
        shards = shard_by_htm7(self.cat)
        self.assertEqual(n, len(shards))
        refs = self.butler.query_datasets("gaia_dr3_stars", collections=run)
        self.assertEqual(len(refs), n)
        dataset_type = self.butler.get_dataset_type("gaia_dr3_stars")
        self.assertEqual(dataset_type.storageClass_name, "ArrowAstropy")
        self.assertEqual(list(dataset_type.dimensions.names), ["htm7"])
        import lsst.sphgeom as sphgeom

        pixelization = sphgeom.HtmPixelization(7)
        pieces = []
        for ref in refs:
            table = self.butler.get(ref)
            index = ref.dataId["htm7"]
            region = pixelization.pixel(index)
            self.assertTrue(
                all(
                    region.contains(sphgeom.UnitVector3d(sphgeom.LonLat.fromDegrees(r, d)))
                    for r, d in zip(table["ra"], table["dec"])
                )
            )
            self.assertEqual(table["ra"].unit, u.deg)
            pieces.append(table)
        from astropy.table import vstack

        union = vstack(pieces)
        union.sort("source_id")
        self.assertEqual(union.colnames, list(STAR_COLUMNS))
        for name in STAR_COLUMNS:
            self.assertTrue(
                np.array_equal(np.asarray(union[name]), np.asarray(self.cat[name]), equal_nan=True)
            )
        # The same shards again in the same run: refused, nothing changes.
        with self.assertRaisesRegex(ValueError, "already holds"):
            ingest_star_catalog(self.butler, self.cat, run=run)
        self.assertEqual(len(self.butler.query_datasets("gaia_dr3_stars", collections=run)), n)

    def test_conflicting_dataset_type(self):
        from lsst.daf.butler import DatasetType

        self.butler.registry.registerDatasetType(
            DatasetType("gaia_dr3_stars", ("htm8",), "ArrowAstropy", universe=self.butler.dimensions)
        )
        with self.assertRaisesRegex(ValueError, "already exists"):
            ingest_star_catalog(self.butler, self.cat, run="refcats/x")
        self.assertNotIn("refcats/x", list(self.butler.registry.queryCollections()))
        self.assertEqual(
            ingest_star_catalog(
                self.butler, self.cat, run="refcats/x", level=8, dataset_type="gaia_dr3_stars"
            ),
            len(shard_by_htm7(self.cat, 8)),
        )

    def _failing_put(self, fail_at):
        original = self.butler.put
        calls = []

        def put(*args, **kwargs):
            calls.append(1)
            if len(calls) == fail_at:
                raise RuntimeError("disk full (simulated)")
            return original(*args, **kwargs)

        return put

    def _files(self):
        """Dataset files in the datastore (everything but the registry)."""
        skip = {"butler.yaml", "gen3.sqlite3"}
        return sorted(str(p) for p in Path(self.root).rglob("*") if p.is_file() and p.name not in skip)

    def test_failure_leaves_nothing(self):
        run = "refcats/broken"
        before = self._files()
        with mock.patch.object(self.butler, "put", self._failing_put(3)):
            with self.assertRaisesRegex(RuntimeError, "disk full"):
                ingest_star_catalog(self.butler, self.cat, run=run)
        self.assertNotIn(run, list(self.butler.registry.queryCollections()))
        self.assertNotIn("gaia_dr3_stars", [t.name for t in self.butler.registry.queryDatasetTypes()])
        self.assertEqual(self._files(), before)
        # A later ingest works.
        self.assertEqual(ingest_star_catalog(self.butler, self.cat, run=run), len(shard_by_htm7(self.cat)))

    def test_failure_in_existing_run(self):
        # The run and dataset type exist with other data: only the
        # datasets of the failed call are removed.
        run = "refcats/shared"
        other = synthetic_gaia_catalog(20.0, -40.0, 0.3, 17.0, seed=3)
        n_other = ingest_star_catalog(self.butler, other, run=run)
        files_before = self._files()
        with mock.patch.object(self.butler, "put", self._failing_put(3)):
            with self.assertRaises(RuntimeError):
                ingest_star_catalog(self.butler, self.cat, run=run)
        refs = self.butler.query_datasets("gaia_dr3_stars", collections=run)
        self.assertEqual(len(refs), n_other)
        self.assertEqual(self._files(), files_before)
        union = np.sort(np.concatenate([np.asarray(self.butler.get(r)["source_id"]) for r in refs]))
        self.assertTrue(np.array_equal(union, np.sort(np.asarray(other["source_id"]))))


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    """Check for resource leaks."""

    pass


def setup_module(module):
    """Initialize the LSST test framework (pytest hook)."""
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
