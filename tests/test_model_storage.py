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

"""Storage of trained models: safetensors files, integrity checks, Butler."""

import json
import os
import pickle
import struct
import tempfile
import unittest
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

import lsst.utils.tests
from lsst.trail_detect.models import storage
from lsst.trail_detect.models.storage import (
    ModelIntegrityError,
    TrailDetectorModel,
    TrailDetectorModelFormatter,
    tensor_checksum,
)

# The YAML to merge into a repository's butler config (as in
# python/lsst/trail_detect/configs/butler_extra.yaml).
BUTLER_CONFIG_YAML = """
storageClasses:
  TrailDetectorModel:
    pytype: lsst.trail_detect.models.storage.TrailDetectorModel
datastore:
  formatters:
    TrailDetectorModel: lsst.trail_detect.models.storage.TrailDetectorModelFormatter
"""

UNPICKLED = []


def _record_unpickling():
    """Called only if a malicious pickle in a test is ever unpickled."""
    UNPICKLED.append(True)
    return "unpickled"


class _Malicious:
    def __reduce__(self):
        return (_record_unpickling, ())


class TinyNet(nn.Module):
    """A small network with parameters, float and integer buffers."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        self.norm = nn.BatchNorm2d(channels)
        self.head = nn.Conv2d(channels, 1, 1)
        self.register_buffer("scale", torch.tensor([0.5], dtype=torch.float64))

    def forward(self, x):
        return self.head(torch.relu(self.norm(self.conv(x)))) * self.scale.to(x.dtype)


def tiny_builder(architecture: dict) -> nn.Module:
    assert architecture["name"] == "tiny"
    return TinyNet(architecture["channels"])


def make_trained(seed: int = 3) -> TinyNet:
    """Return a TinyNet whose weights and running statistics are not the defaults."""
    torch.manual_seed(seed)
    net = TinyNet(4)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        x = torch.randn(2, 1, 8, 8)
        loss = net(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def make_model(seed: int = 3, threshold: float = 0.37) -> tuple[TinyNet, TrailDetectorModel]:
    net = make_trained(seed)
    metadata = {
        "normalization": {
            "method": "variance",
            "background": 0.0,
            "scale": 1.0,
            "clip_min": -10.0,
            "clip_max": 50.0,
        },
        "provenance": {
            "collections": ["u/test/tiles"],
            "shards": [{"visit": 1, "detector": 4}, {"visit": 2, "detector": 0}],
            "seed": seed,
        },
        "validation": {"iou": 0.61, "auc": np.float64(0.93)},
        "threshold": threshold,
        "score_calibration": {"method": "isotonic", "x": [0.0, 0.5, 1.0], "y": [0.0, 0.4, 1.0]},
    }
    model = TrailDetectorModel.from_module(
        net, kind="trail", architecture={"name": "tiny", "channels": 4}, metadata=metadata
    )
    return net, model


def rewrite_header(path: Path, edit) -> None:
    """Apply ``edit`` to the parsed safetensors header and rewrite the file."""
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    edit(header)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size :])


class ModelStorageTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()

    def test_round_trip(self):
        net, model = make_model()
        # Independent of the module afterwards.
        with torch.no_grad():
            net.conv.weight.add_(1.0)
        net = make_trained()
        path = model.save(self.dir / "model.safetensors")
        loaded = TrailDetectorModel.load(path)
        self.assertEqual(loaded.kind, "trail")
        self.assertEqual(loaded.architecture, {"name": "tiny", "channels": 4})
        expected_meta = json.loads(json.dumps(model.metadata, default=float))
        self.assertEqual(loaded.metadata, expected_meta)
        self.assertEqual(loaded.metadata["validation"]["auc"], 0.93)
        self.assertIn("package_version", loaded.metadata)
        self.assertEqual(set(loaded.tensors), set(net.state_dict()))
        for name, tensor in net.state_dict().items():
            self.assertEqual(loaded.tensors[name].dtype, tensor.dtype, name)
            self.assertTrue(torch.equal(loaded.tensors[name], tensor), name)
        self.assertEqual(loaded.tensors["norm.num_batches_tracked"].dtype, torch.int64)
        self.assertEqual(loaded.sha256, model.sha256)
        self.assertEqual(len(loaded.sha256), 64)
        self.assertAlmostEqual(loaded.threshold, 0.37)
        norm = loaded.normalization
        self.assertEqual((norm.method, norm.clip_min, norm.clip_max), ("variance", -10.0, 50.0))
        n_bytes = sum(t.numel() * t.element_size() for t in net.state_dict().values())
        self.assertEqual(loaded.size_bytes(), n_bytes)
        summary = loaded.summary()
        self.assertNotIn("\n", summary)
        self.assertIn("tiny", summary)
        self.assertIn(loaded.sha256[:12], summary)

        rebuilt = loaded.build(builder=tiny_builder)
        self.assertFalse(rebuilt.training)
        x = torch.randn(3, 1, 16, 16, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            self.assertTrue(torch.equal(rebuilt(x), net(x)))
        # Strict loading: a builder making a different module fails.
        with self.assertRaises(RuntimeError):
            loaded.build(builder=lambda arch: TinyNet(arch["channels"] + 1))

    def test_numpy_tensors_and_checksum(self):
        _, model = make_model()
        as_numpy = {name: t.numpy() for name, t in model.tensors.items()}
        self.assertEqual(tensor_checksum(as_numpy), model.sha256)
        reordered = dict(reversed(list(as_numpy.items())))
        self.assertEqual(tensor_checksum(reordered), model.sha256)
        numpy_model = TrailDetectorModel(
            kind="star", architecture=model.architecture, tensors=as_numpy, metadata={"threshold": 0.5}
        )
        path = numpy_model.save(self.dir / "star.safetensors")
        loaded = TrailDetectorModel.load(path)
        self.assertEqual(loaded.kind, "star")
        self.assertEqual(loaded.sha256, model.sha256)
        self.assertIsNone(loaded.normalization)
        # Same values but another dtype or shape: another checksum.
        changed = dict(as_numpy)
        changed["scale"] = changed["scale"].astype(np.float32)
        self.assertNotEqual(tensor_checksum(changed), model.sha256)
        changed = dict(as_numpy)
        changed["conv.bias"] = changed["conv.bias"].reshape(2, 2)
        self.assertNotEqual(tensor_checksum(changed), model.sha256)
        with self.assertRaises(ValueError):
            TrailDetectorModel(kind="galaxy", architecture={}, tensors={})
        with self.assertRaises(ValueError):
            TrailDetectorModel(kind="trail", architecture={}, tensors={}, metadata={"x": object()})
        with self.assertRaises(TypeError):
            TrailDetectorModel(kind="trail", architecture={}, tensors={"a": [1, 2]})

    def test_flipped_byte(self):
        _, model = make_model()
        path = model.save(self.dir / "model.safetensors")
        data = bytearray(path.read_bytes())
        (size,) = struct.unpack("<Q", data[:8])
        data[8 + size + 37] ^= 0x01
        path.write_bytes(bytes(data))
        with self.assertRaisesRegex(ModelIntegrityError, "model.safetensors.*checksum"):
            TrailDetectorModel.load(path)

    def test_tampered_header(self):
        _, model = make_model()
        original = model.save(self.dir / "model.safetensors").read_bytes()

        def check(edit, pattern):
            path = self.dir / "tampered.safetensors"
            path.write_bytes(original)
            rewrite_header(path, edit)
            with self.assertRaisesRegex(ModelIntegrityError, pattern) as cm:
                TrailDetectorModel.load(path)
            self.assertIn("tampered.safetensors", str(cm.exception))

        def set_meta(key, value):
            return lambda header: header["__metadata__"].__setitem__(key, value)

        # Unchanged header, rewritten: still loads.
        check_path = self.dir / "tampered.safetensors"
        check_path.write_bytes(original)
        rewrite_header(check_path, lambda header: None)
        self.assertEqual(TrailDetectorModel.load(check_path).sha256, model.sha256)

        check(set_meta("sha256", "0" * 64), "tensor checksum")
        check(set_meta("metadata_sha256", "0" * 64), "checksum of kind, architecture and metadata")
        meta = json.loads(json.dumps(model.metadata, default=float))
        meta["threshold"] = 0.01
        check(set_meta("metadata", json.dumps(meta)), "checksum of kind")
        check(set_meta("architecture", json.dumps({"name": "tiny", "channels": 5})), "checksum of kind")
        check(set_meta("metadata", "{not json"), "not valid JSON")
        check(set_meta("format_version", "999"), "version")
        check(set_meta("kind", "galaxy"), "kind")
        check(set_meta("format", "something.else"), "format")
        check(lambda header: header["__metadata__"].pop("sha256"), "lacks sha256")
        check(lambda header: header.pop("__metadata__"), "no model metadata")

    def test_plain_safetensors_refused(self):
        from safetensors.torch import save_file

        path = self.dir / "plain.safetensors"
        save_file({"w": torch.ones(3)}, str(path))
        with self.assertRaisesRegex(ModelIntegrityError, "no model metadata"):
            TrailDetectorModel.load(path)

    def test_pickles_never_loaded(self):
        net, _ = make_model()
        candidates = {}
        path = self.dir / "zip.safetensors"
        torch.save(net.state_dict(), path)
        candidates["torch zip"] = path
        path = self.dir / "legacy.safetensors"
        torch.save({"payload": _Malicious(), **net.state_dict()}, path, _use_new_zipfile_serialization=False)
        candidates["torch legacy"] = path
        path = self.dir / "pickle.safetensors"
        path.write_bytes(pickle.dumps({"payload": _Malicious()}, protocol=4))
        candidates["pickle"] = path
        path = self.dir / "text.safetensors"
        path.write_text("not a model\n")
        candidates["text"] = path
        path = self.dir / "empty.safetensors"
        path.write_bytes(b"")
        candidates["empty"] = path
        path = self.dir / "random.safetensors"
        path.write_bytes(np.random.default_rng(1).bytes(4096))
        candidates["random"] = path
        # A framing that claims a header longer than the file.
        path = self.dir / "short.safetensors"
        path.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
        candidates["short"] = path

        forbidden = AssertionError("unpickling attempted")
        with (
            mock.patch("torch.load", side_effect=forbidden),
            mock.patch("pickle.load", side_effect=forbidden),
            mock.patch("pickle.loads", side_effect=forbidden),
            mock.patch("pickle.Unpickler", side_effect=forbidden),
        ):
            for label, path in candidates.items():
                with self.subTest(label):
                    with self.assertRaises(ModelIntegrityError) as cm:
                        TrailDetectorModel.load(path)
                    self.assertIn(path.name, str(cm.exception))
            # A valid file still loads under the same patches.
            _, model = make_model()
            good = model.save(self.dir / "good.safetensors")
            self.assertEqual(TrailDetectorModel.load(good).sha256, model.sha256)
        self.assertEqual(UNPICKLED, [])
        # The malicious pickle is real: unpickling it would have run code.
        self.assertEqual(pickle.loads(pickle.dumps(_Malicious())), "unpickled")
        UNPICKLED.clear()

    def test_atomic_write(self):
        _, first = make_model(seed=3, threshold=0.3)
        _, second = make_model(seed=4, threshold=0.6)
        self.assertNotEqual(first.sha256, second.sha256)
        path = first.save(self.dir / "model.safetensors")
        before = path.read_bytes()
        # Fail after the data were written to the temporary file.
        with mock.patch.object(storage.os, "fsync", side_effect=OSError("disk full")):
            with self.assertRaises(OSError):
                second.save(path)
        self.assertEqual(path.read_bytes(), before)
        self.assertEqual(sorted(os.listdir(self.dir)), ["model.safetensors"])
        self.assertEqual(TrailDetectorModel.load(path).sha256, first.sha256)
        # Fail at the rename: same.
        with mock.patch.object(storage.os, "replace", side_effect=OSError("no")):
            with self.assertRaises(OSError):
                second.save(path)
        self.assertEqual(path.read_bytes(), before)
        self.assertEqual(sorted(os.listdir(self.dir)), ["model.safetensors"])
        # A new destination is not created when writing fails.
        with mock.patch.object(storage.os, "fsync", side_effect=OSError("disk full")):
            with self.assertRaises(OSError):
                second.save(self.dir / "new.safetensors")
        self.assertEqual(sorted(os.listdir(self.dir)), ["model.safetensors"])
        # The successful overwrite then replaces it.
        second.save(path)
        self.assertEqual(TrailDetectorModel.load(path).sha256, second.sha256)
        self.assertEqual(TrailDetectorModel.load(path).threshold, 0.6)
        self.assertEqual(sorted(os.listdir(self.dir)), ["model.safetensors"])
        # Permissions are those of an ordinary file, not mkstemp's 0o600.
        umask = os.umask(0o022)
        os.umask(umask)
        self.assertEqual(path.stat().st_mode & 0o777, 0o666 & ~umask)

    def test_butler_round_trip(self):
        from lsst.daf.butler import Butler, Config, DatasetType

        _, model = make_model()
        root = str(self.dir / "repo")
        Butler.makeRepo(root, config=Config.fromString(BUTLER_CONFIG_YAML))
        butler = Butler.from_config(root, writeable=True, run="u/test/models")
        dataset_type = DatasetType(
            "trail_detector_model", (), "TrailDetectorModel", universe=butler.dimensions
        )
        butler.registry.registerDatasetType(dataset_type)
        ref = butler.put(model, "trail_detector_model")
        uri = butler.getURI(ref)
        self.assertEqual(uri.getExtension(), ".safetensors")
        got = butler.get("trail_detector_model", collections="u/test/models")
        self.assertIsInstance(got, TrailDetectorModel)
        self.assertEqual(got.sha256, model.sha256)
        self.assertEqual(got.architecture, model.architecture)
        self.assertEqual(got.metadata, json.loads(json.dumps(model.metadata, default=float)))
        for name, tensor in model.tensors.items():
            self.assertTrue(torch.equal(got.tensors[name], tensor), name)
        # The file in the datastore is a plain model file.
        self.assertEqual(TrailDetectorModel.load(uri.ospath).sha256, model.sha256)
        self.assertEqual(TrailDetectorModelFormatter.default_extension, ".safetensors")
        butler.close()


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
