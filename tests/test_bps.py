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

"""Batch execution: ``bps submit`` through ctrl_bps_parsl's Local site, and the quantum-backed
butler (``pipetask qgraph`` -> ``pre-exec-init-qbb`` -> ``run-qbb`` -> ``butler transfer-from-graph``).

Each class builds its own one-detector repository with ``trail-detect make-repo`` and runs
``pipelines/InjectTrails.yaml`` on it; the commands run as subprocesses in their own session, and
whatever they leave running is ended by process id afterwards.
"""

import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import psutil

import lsst.utils.tests

try:
    importlib.import_module("lsst.ctrl.bps.parsl")
    HAVE_BPS_PARSL = True
except ImportError:
    HAVE_BPS_PARSL = False

SIZE = 256
VISITS = 1
DETECTORS = 1
INPUTS = "SimCam/runs/survey,SimCam/defaults"
QUERY = "instrument = 'SimCam'"
OUTPUT_TYPES = ("injected_visit_image", "injected_visit_image_catalog")
TIMEOUT = 600
BIN = Path(sys.executable).parent
BPS_DIR = Path(__file__).resolve().parents[1] / "bps"


def command(name: str) -> str:
    """Return the console script ``name`` of this environment (else from PATH)."""
    exe = BIN / name
    return str(exe) if exe.exists() else name


def subprocess_env(cwd: str) -> dict[str, str]:
    """Environment for the middleware commands and the jobs they start."""
    from lsst.trail_detect.paths import package_dir

    return dict(
        os.environ,
        TRAIL_DETECT_DIR=str(package_dir()),
        # bps job commands call plain `pipetask` and `butler`.
        PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
        # BPS expands ${PWD} in its defaults (submitPath, idLinkPath).
        PWD=cwd,
    )


def session_processes(sid: int) -> list[psutil.Process]:
    """Live processes of session ``sid`` (the session a command was started in)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.pid != os.getpid() and os.getsid(proc.pid) == sid and proc.status() != "zombie":
                found.append(proc)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def end_session(sid: int, grace: float = 15.0) -> list[str]:
    """Wait up to ``grace`` seconds for session ``sid`` to empty, then end what is left by pid.

    Returns the command lines of the processes that had to be ended.
    """
    deadline = time.monotonic() + grace
    left = session_processes(sid)
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = session_processes(sid)
    ended = []
    for proc in left:
        try:
            ended.append(" ".join(proc.cmdline()))
            proc.terminate()
        except psutil.Error:
            continue
    _, alive = psutil.wait_procs(left, timeout=5)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return ended


def run(args: list[str], cwd: str, timeout: float = TIMEOUT) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run a command in a new session with no stdin; end its leftovers afterwards.

    Returns the completed process and the command lines of processes that outlived it.
    """
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        env=subprocess_env(cwd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
        end_session(proc.pid, grace=0.0)
        raise AssertionError(f"{' '.join(args)} timed out after {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
    leftovers = end_session(proc.pid)
    return subprocess.CompletedProcess(args, proc.returncode, out, err), leftovers


def check(args: list[str], cwd: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """Run a command as `run` does and raise with its output if it fails."""
    result, _ = run(args, cwd, timeout)
    if result.returncode != 0:
        tail = f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{tail}")
    return result


def make_repo(tmp: str) -> str:
    """Make a one-visit, one-detector repository under ``tmp``; return its path."""
    repo = os.path.join(tmp, "repo")
    exe = BIN / "trail-detect"
    cli = (
        [str(exe)]
        if exe.exists()
        else [sys.executable, "-c", "from lsst.trail_detect.cli.trail_detect import main; main()"]
    )
    check(
        cli
        + ["make-repo", repo, "--visits", str(VISITS), "--detectors", str(DETECTORS)]
        + ["--size", str(SIZE), "--seed", "3", "-j", "1"],
        cwd=tmp,
    )
    return repo


class OutputChecks:
    """Checks shared by the two classes: outputs exist for every data ID and can be read."""

    output: str

    def data_ids(self, butler, dataset_type, collections):
        refs = butler.query_datasets(dataset_type, collections=collections, limit=None)
        return {(r.dataId["visit"], r.dataId["detector"]) for r in refs}, refs

    def check_outputs(self, butler):
        expected, inputs = self.data_ids(butler, "visit_image", "SimCam/runs/survey")
        self.assertEqual(len(expected), VISITS * DETECTORS)
        # The output CHAINED collection: the new timestamped RUN first, then the inputs.
        chain = butler.collections.get_info(self.output)
        self.assertEqual(chain.type.name, "CHAINED")
        self.assertTrue(chain.children[0].startswith(self.output + "/"), chain.children)
        self.assertIn(inputs[0].run, chain.children)
        for dataset_type in OUTPUT_TYPES:
            found, refs = self.data_ids(butler, dataset_type, self.output)
            self.assertEqual(found, expected, dataset_type)
            self.assertEqual({ref.run for ref in refs}, {chain.children[0]}, dataset_type)

    def check_readable(self, butler):
        refs = butler.query_datasets("injected_visit_image", collections=self.output, limit=None)
        self.assertEqual(len(refs), VISITS * DETECTORS)
        for ref in refs:
            data_id = ref.dataId
            image = butler.get(ref)
            self.assertEqual(type(image).__name__, "VisitImage")
            self.assertEqual(image.image.array.shape, (SIZE, SIZE))
            self.assertTrue(image.mask.get("INJECTED").any())
            catalog = butler.get("injected_visit_image_catalog", data_id, collections=self.output)
            self.assertGreater(len(catalog), 0)
            self.assertIn("injection_flag", catalog.colnames)
            truth_mask = butler.get("injected_trail_mask", data_id, collections=self.output)
            self.assertTrue(truth_mask.get("TRAIL").any())


@unittest.skipUnless(
    HAVE_BPS_PARSL, "lsst.ctrl.bps.parsl cannot be imported: pip install lsst-ctrl-bps-parsl"
)
class BpsParslLocalTestCase(OutputChecks, lsst.utils.tests.TestCase):
    """``bps submit bps/bps_local_parsl.yaml`` on a throw-away repository."""

    output = "u/test/bps_parsl"

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="trail_detect_bps_")
        try:
            cls.repo = make_repo(cls.tmp)
            # The submit YAML of the package, unchanged, plus a submit directory in the temp dir
            # (bps submit has no command-line option for submitPath).
            cls.submit_root = os.path.join(cls.tmp, "submit")
            cls.config = os.path.join(cls.tmp, "bps_test.yaml")
            with open(cls.config, "w") as stream:
                stream.write(
                    f"includeConfigs:\n  - {BPS_DIR / 'bps_local_parsl.yaml'}\n"
                    f"submitPath: {cls.submit_root}/{{outputRun}}\n"
                )
            from lsst.trail_detect.paths import pipeline_path

            cls.start = time.monotonic()
            cls.proc, cls.leftovers = run(
                [command("bps"), "submit", cls.config, "-b", cls.repo, "-i", INPUTS, "-o", cls.output]
                + ["-d", QUERY, "-p", str(pipeline_path("InjectTrails.yaml"))],
                cwd=cls.tmp,
            )
            cls.seconds = time.monotonic() - cls.start
        except BaseException:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def setUp(self):
        self.assertEqual(self.proc.returncode, 0, self.proc.stdout[-3000:] + "\n" + self.proc.stderr[-5000:])

    def test_outputs_in_registry(self):
        """The final job brought both outputs of every data ID into the output chain."""
        from lsst.daf.butler import Butler

        butler = Butler.from_config(self.repo)
        self.check_outputs(butler)
        self.check_readable(butler)
        print(f"bps submit took {self.seconds:.1f} s")

    def test_submit_directory(self):
        """The submit directory is in the temp dir, with the graph, per-job logs and Parsl's files."""
        runs = list(Path(self.submit_root).glob("u/test/bps_parsl/*"))
        self.assertEqual(len(runs), 1)
        run_dir = runs[0]
        self.assertTrue(list(run_dir.glob("*.qg")))
        logs = run_dir / "logs"
        for label in ("pipetaskInit", "perDetector", "finalJob"):
            self.assertTrue((logs / label).is_dir(), label)
        # One clustered job ran both tasks of each (visit, detector).
        stderr = list((logs / "perDetector").rglob("*.stderr"))
        self.assertEqual(len(stderr), VISITS * DETECTORS)
        text = stderr[0].read_text()
        self.assertIn("generateTrailCatalog", text)
        self.assertIn("injectTrails", text)
        # Parsl's run directory (site.local.run_dir) went next to it, not into the package.
        self.assertTrue((Path(self.submit_root) / "parsl_runinfo").is_dir())

    def test_no_processes_left(self):
        """Parsl shut its interchange and workers down when bps submit returned."""
        self.assertEqual(self.leftovers, [])


class QuantumBackedButlerTestCase(OutputChecks, lsst.utils.tests.TestCase):
    """Quantum-backed butler: build a graph, execute it without the registry, transfer back."""

    output = "u/test/qbb"

    @classmethod
    def setUpClass(cls):
        from lsst.daf.butler import Butler
        from lsst.trail_detect.paths import pipeline_path

        cls.tmp = tempfile.mkdtemp(prefix="trail_detect_qbb_")
        try:
            cls.repo = make_repo(cls.tmp)
            cls.graph = os.path.join(cls.tmp, "G.qgraph")
            pipetask, butler = command("pipetask"), command("butler")
            check(
                [pipetask, "qgraph", "-b", cls.repo, "-i", INPUTS, "-o", cls.output, "-d", QUERY]
                + ["-p", str(pipeline_path("InjectTrails.yaml"))]
                + ["--save-qgraph", cls.graph, "--qgraph-datastore-records"],
                cwd=cls.tmp,
            )
            check([pipetask, "pre-exec-init-qbb", cls.repo, cls.graph], cwd=cls.tmp)
            check([pipetask, "run-qbb", cls.repo, cls.graph, "-j", "1"], cwd=cls.tmp)
            # Executed, but the registry does not know the outputs yet.
            cls.registered_before = list(
                Butler.from_config(cls.repo).registry.queryDatasetTypes("injected_visit_image")
            )
            cls.transfer = check(
                [butler, "transfer-from-graph", cls.graph, cls.repo]
                + ["--register-dataset-types", "--update-output-chain"],
                cwd=cls.tmp,
            )
        except BaseException:
            shutil.rmtree(cls.tmp, ignore_errors=True)
            raise

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_transfer(self):
        """Outputs are unknown to the registry until transfer-from-graph brings them in."""
        from lsst.daf.butler import Butler

        self.assertEqual(self.registered_before, [])
        self.assertIn("Number of datasets transferred:", self.transfer.stdout + self.transfer.stderr)
        butler = Butler.from_config(self.repo)
        self.check_outputs(butler)

    def test_readable(self):
        """The transferred outputs read back through a plain Butler."""
        from lsst.daf.butler import Butler

        butler = Butler.from_config(self.repo, collections=self.output)
        self.check_readable(butler)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
