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

"""Networks: shapes on any image size, architecture dicts, training steps,
encoder transfer and the hybrid detector's candidates.
"""

import inspect
import json
import math
import unittest

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import maximum_filter

import lsst.utils.tests
from lsst.trail_detect.models.networks import (
    HybridStarDetector,
    LineFilterBank,
    ResAttentionUNet,
    StarCenterNet,
    architecture_of,
    build_model,
    count_parameters,
    default_architecture,
    encoder_kwargs,
    heatmap_peaks,
    input_conv_key,
    line_filter_kernels,
    load_widened_state,
    loss_targets_for_candidates,
    model_size_bytes,
    prepare_for_inference,
    set_encoder_trainable,
    transfer_encoder,
)

SIZES = ((37, 53), (64, 64), (129, 100))


class SingleThreadTestCase(lsst.utils.tests.TestCase):
    """Run with one torch thread: the tensors are tiny, and several
    threads contending with other processes for the cores slow small
    operations down a hundredfold.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls._threads = torch.get_num_threads()
        torch.set_num_threads(1)

    @classmethod
    def tearDownClass(cls):
        torch.set_num_threads(cls._threads)
        super().tearDownClass()


def tiny(name, **kwargs):
    """A small architecture dict of each network, for CPU-light tests."""
    if name == "HybridStarDetector":
        base = {"base_channels": 4, "blocks": [1, 1, 1], "top_k": 8, "embed_dim": 16, "heads": 2, "layers": 1}
    else:
        base = {"base_channels": 4, "depth": 2}
    return {"name": name, **base, **kwargs}


def line_set(n=8, size=32, seed=1):
    """Noise images, half with a bright line, and their masks."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n, 1, size, size)).astype(np.float32)
    masks = np.zeros((n, 1, size, size), dtype=np.float32)
    yy, xx = np.mgrid[:size, :size]
    for i in range(0, n, 2):
        angle = rng.uniform(0, np.pi)
        x0, y0 = rng.uniform(size * 0.3, size * 0.7, 2)
        distance = np.abs((xx - x0) * np.sin(angle) - (yy - y0) * np.cos(angle))
        masks[i, 0] = distance < 1.5
        images[i, 0] += 3.0 * np.exp(-0.5 * (distance / 1.0) ** 2)
    return torch.from_numpy(images), torch.from_numpy(masks)


def star_set(n=6, size=32, stars=4, sigma=1.5, seed=2):
    """Gaussian stars on noise, CenterNet heatmap and offset targets and positions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.normal(scale=0.3, size=(n, 1, size, size)).astype(np.float32)
    heatmap = np.zeros((n, 1, size, size), dtype=np.float32)
    offset = np.zeros((n, 2, size, size), dtype=np.float32)
    offset_mask = np.zeros((n, 1, size, size), dtype=np.float32)
    truth = []
    for i in range(n):
        xy = rng.uniform(4, size - 4, (stars, 2))
        truth.append(xy)
        for x, y in xy:
            images[i, 0] += 5.0 * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma**2)
            ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            heatmap[i, 0] = np.maximum(heatmap[i, 0], np.exp(-0.5 * ((xx - ix) ** 2 + (yy - iy) ** 2)))
            offset[i, :, iy, ix] = (x - ix, y - iy)
            offset_mask[i, 0, iy, ix] = 1.0
    return (
        torch.from_numpy(images),
        torch.from_numpy(heatmap),
        torch.from_numpy(offset),
        torch.from_numpy(offset_mask),
        truth,
    )


def star_loss(outputs, heatmap, offset, offset_mask):
    loss = F.binary_cross_entropy_with_logits(outputs["heatmap"], heatmap)
    l1 = (outputs["offset"] - offset).abs() * offset_mask
    return loss + l1.sum() / offset_mask.sum().clamp(min=1.0)


def train(model, loss_fn, steps, lr=1e-2):
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


class ShapeTestCase(SingleThreadTestCase):
    """Forward shapes on odd and even sizes, for every network and depth."""

    def setUp(self):
        torch.manual_seed(0)

    def check_outputs(self, model, height, width, n=2):
        x = torch.randn(n, model.architecture["in_channels"], height, width)
        with torch.no_grad():
            out = model(x)
        if isinstance(model, ResAttentionUNet):
            self.assertEqual(tuple(out.shape), (n, model.architecture["out_channels"], height, width))
            self.assertTrue(torch.isfinite(out).all())
            return out
        self.assertEqual(tuple(out["heatmap"].shape), (n, 1, height, width))
        self.assertEqual(tuple(out["offset"].shape), (n, 2, height, width))
        if isinstance(model, HybridStarDetector):
            k = min(model.top_k, height * width)
            self.assertEqual(tuple(out["candidates"].shape), (n, k, 2))
            self.assertEqual(tuple(out["candidate_logits"].shape), (n, k))
            self.assertEqual(tuple(out["candidate_offset"].shape), (n, k, 2))
        for value in out.values():
            self.assertTrue(torch.isfinite(value).all())
        return out

    def test_unet_family_depths(self):
        for name in ("ResAttentionUNet", "StarCenterNet"):
            for depth in range(2, 6):
                model = build_model(tiny(name, depth=depth)).eval()
                for height, width in SIZES:
                    with self.subTest(name=name, depth=depth, size=(height, width)):
                        self.check_outputs(model, height, width)

    def test_hybrid_depths(self):
        for n_layers in range(2, 6):
            model = build_model(tiny("HybridStarDetector", blocks=[1] * n_layers)).eval()
            for height, width in SIZES:
                with self.subTest(layers=n_layers, size=(height, width)):
                    self.check_outputs(model, height, width)
        # ResNet-34 block counts, tiny widths.
        model = HybridStarDetector(base_channels=4, top_k=32, embed_dim=16, heads=2, layers=1).eval()
        self.assertEqual([len(stage) for stage in model.encoder_stages()[1:]], [3, 4, 6, 3])
        self.check_outputs(model, 37, 53)

    def test_options(self):
        for kwargs in (
            {"attention": "none", "norm": "group", "activation": "relu", "pad_mode": "zeros"},
            {"attention": "se", "norm": "none", "dropout": 0.1, "blocks_per_stage": 2},
            {
                "attention": "gate",
                "in_channels": 2,
                "out_channels": 3,
                "pad_mode": "replicate",
                "max_channels": 8,
            },
        ):
            with self.subTest(**kwargs):
                model = build_model(tiny("ResAttentionUNet", depth=3, **kwargs)).eval()
                self.check_outputs(model, 37, 53)
        # Images smaller than the total stride (reflect falls back to replicate).
        model = build_model(tiny("StarCenterNet", depth=5)).eval()
        self.check_outputs(model, 5, 7, n=1)
        model = build_model(tiny("HybridStarDetector")).eval()
        self.check_outputs(model, 2, 3, n=1)

    def test_training_mode_batch(self):
        model = build_model(tiny("ResAttentionUNet", depth=3)).train()
        out = model(torch.randn(2, 1, 37, 53))
        self.assertEqual(tuple(out.shape), (2, 1, 37, 53))

    def test_padding_alignment(self):
        """Outputs are aligned with the input: cropping keeps the top-left
        corner, and shifts by multiples of the stride commute with the
        network away from the edges.
        """
        model = ResAttentionUNet(base_channels=4, depth=3, attention="gate").eval()
        x = torch.randn(1, 1, 37, 53)
        padded = F.pad(x, (0, 56 - 53, 0, 40 - 37), mode="reflect")
        with torch.no_grad():
            self.assertFloatsAlmostEqual(
                model(x).numpy(), model(padded)[..., :37, :53].numpy(), atol=1e-5, rtol=1e-5
            )
            big = torch.randn(1, 1, 160, 160)
            a = model(big[..., :128, :128])
            b = model(big[..., 16:144, 16:144])
        self.assertFloatsAlmostEqual(
            a[..., 56:72, 56:72].numpy(), b[..., 40:56, 40:56].numpy(), atol=1e-4, rtol=1e-4
        )

    def test_accessors(self):
        for name in ("ResAttentionUNet", "StarCenterNet", "HybridStarDetector"):
            model = build_model(tiny(name))
            stages = model.encoder_stages()
            self.assertGreaterEqual(len(stages), 3)
            encoder_ids = {id(p) for p in model.encoder.parameters()}
            self.assertEqual(encoder_ids, {id(p) for stage in stages for p in stage.parameters()})
            self.assertTrue(isinstance(model.decoder, torch.nn.Module))
            self.assertTrue(isinstance(model.head, torch.nn.Module))
        star = StarCenterNet(base_channels=4, depth=2)
        bias = star.head["heatmap"][-1].bias.item()
        self.assertAlmostEqual(bias, math.log(0.1 / 0.9), places=5)


class ArchitectureTestCase(SingleThreadTestCase):
    """Architecture dicts rebuild identical modules; bad ones raise."""

    def test_rebuild(self):
        for name in ("ResAttentionUNet", "StarCenterNet", "HybridStarDetector"):
            with self.subTest(name=name):
                model = build_model(tiny(name))
                architecture = architecture_of(model)
                self.assertEqual(architecture["name"], name)
                self.assertEqual(json.loads(json.dumps(architecture)), architecture)
                rebuilt = build_model(json.loads(json.dumps(architecture)))
                self.assertEqual(type(rebuilt), type(model))
                self.assertEqual(architecture_of(rebuilt), architecture)
                state, rebuilt_state = model.state_dict(), rebuilt.state_dict()
                self.assertEqual(list(state), list(rebuilt_state))
                for key, value in state.items():
                    self.assertEqual(value.shape, rebuilt_state[key].shape, msg=key)
                rebuilt.load_state_dict(state)

    def test_defaults(self):
        for kind in ("trail", "star", "hybrid"):
            for size in ("compact", "large"):
                architecture = default_architecture(kind, size)
                self.assertEqual(json.loads(json.dumps(architecture)), architecture)
                self.assertEqual(architecture_of(build_model(architecture)), architecture)
        # Trail and star defaults share their encoder, for pretraining and transfer.
        for size in ("compact", "large"):
            self.assertEqual(
                encoder_kwargs(default_architecture("trail", size)),
                encoder_kwargs(default_architecture("star", size)),
            )
        self.assertEqual(default_architecture("trail", in_channels=2)["in_channels"], 2)
        with self.assertRaises(ValueError):
            default_architecture("galaxy")
        with self.assertRaises(ValueError):
            default_architecture("trail", "huge")

    def test_compact_parameter_count(self):
        model = build_model(default_architecture("trail", "compact"))
        n = count_parameters(model)
        size = model_size_bytes(model)
        print(f"\ncompact trail network: {n} parameters, {size / 2**20:.2f} MiB")
        self.assertGreater(n, 2e5)
        self.assertLess(n, 5e6)
        self.assertGreaterEqual(size, 4 * n)
        large = build_model(default_architecture("trail", "large"))
        self.assertGreater(count_parameters(large), 2 * n)

    def test_errors(self):
        with self.assertRaisesRegex(ValueError, "NoSuchNet"):
            build_model({"name": "NoSuchNet"})
        with self.assertRaisesRegex(ValueError, "name"):
            build_model({"base_channels": 4})
        with self.assertRaisesRegex(ValueError, "widht"):
            build_model({"name": "ResAttentionUNet", "widht": 4})
        with self.assertRaisesRegex(ValueError, "embed_dim"):
            build_model({"name": "StarCenterNet", "embed_dim": 4})
        for bad in (
            {"attention": "gate+transformer"},
            {"norm": "layer"},
            {"activation": "gelu"},
            {"depth": 0},
            {"base_channels": 2.5},
            {"dropout": 1.0},
            {"pad_mode": "circular"},
        ):
            with self.subTest(**bad), self.assertRaises(ValueError):
                build_model(tiny("ResAttentionUNet", **bad))
        with self.assertRaisesRegex(ValueError, "divide"):
            build_model(tiny("HybridStarDetector", embed_dim=10, heads=4))
        with self.assertRaises(ValueError):
            architecture_of(torch.nn.Linear(2, 2))


class TrainingTestCase(SingleThreadTestCase):
    """A few Adam steps on tiny synthetic sets lower the loss clearly."""

    def test_unet_learns_lines(self):
        images, masks = line_set()
        torch.manual_seed(3)
        model = ResAttentionUNet(base_channels=8, depth=2)
        pos_weight = torch.tensor(5.0)
        losses = train(
            model,
            lambda m: F.binary_cross_entropy_with_logits(m(images), masks, pos_weight=pos_weight),
            steps=25,
        )
        print(f"\n{self.id()}: first loss {losses[0]:.3f}, last {losses[-1]:.3f}")
        self.assertLess(min(losses[-3:]), 0.7 * losses[0], msg=losses)

    def test_star_centernet_learns(self):
        images, heatmap, offset, offset_mask, _ = star_set()
        torch.manual_seed(4)
        model = StarCenterNet(base_channels=8, depth=2)
        losses = train(model, lambda m: star_loss(m(images), heatmap, offset, offset_mask), steps=25)
        print(f"\n{self.id()}: first loss {losses[0]:.3f}, last {losses[-1]:.3f}")
        self.assertLess(min(losses[-3:]), 0.7 * losses[0], msg=losses)

    def test_hybrid_learns(self):
        images, heatmap, offset, offset_mask, truth = star_set()
        torch.manual_seed(5)
        model = HybridStarDetector(base_channels=8, blocks=[1, 1], top_k=12, embed_dim=16, heads=2, layers=1)
        record = []

        def loss_fn(m):
            out = m(images)
            dense = star_loss(out, heatmap, offset, offset_mask)
            labels, offset_targets = loss_targets_for_candidates(out["candidates"], truth, radius=1.5)
            candidate = F.binary_cross_entropy_with_logits(out["candidate_logits"], labels)
            l1 = (out["candidate_offset"] - offset_targets).abs().sum(-1) * labels
            record.append((float(dense.detach()), labels, out["candidate_logits"].detach()))
            return dense + candidate + l1.sum() / labels.sum().clamp(min=1)

        train(model, loss_fn, steps=30)
        dense = [r[0] for r in record]
        print(f"\n{self.id()}: first dense loss {dense[0]:.3f}, last {dense[-1]:.3f}")
        self.assertLess(min(dense[-3:]), 0.7 * dense[0], msg=dense)
        # The candidates (the predicted peaks) have moved onto the stars, and
        # the refined logits rank the matched candidates above the others.
        _, labels, logits = record[-1]
        n_truth = sum(len(t) for t in truth)
        self.assertGreater(float(labels.sum()), 0.5 * n_truth)
        self.assertGreater(float(logits[labels > 0].mean()), float(logits[labels == 0].mean()))

    def test_prepare_for_inference(self):
        images, heatmap, offset, offset_mask, _ = star_set(n=4)
        for name in ("ResAttentionUNet", "StarCenterNet", "HybridStarDetector"):
            with self.subTest(name=name):
                torch.manual_seed(6)
                model = build_model(tiny(name))
                if name == "ResAttentionUNet":
                    train(model, lambda m: (m(images) - heatmap).square().mean(), steps=3)
                else:
                    train(model, lambda m: star_loss(m(images), heatmap, offset, offset_mask), steps=3)
                model.eval()
                fast = prepare_for_inference(model)
                self.assertFalse(any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules()))
                self.assertEqual(architecture_of(fast), architecture_of(model))
                self.assertTrue(any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()))
                with torch.no_grad():
                    slow_out, fast_out = model(images), fast(images)
                if name == "ResAttentionUNet":
                    slow_out, fast_out = {"logits": slow_out}, {"logits": fast_out}
                for key, value in slow_out.items():
                    scale = float(value.abs().max()) + 1.0
                    self.assertFloatsAlmostEqual(
                        fast_out[key].numpy(), value.numpy(), atol=1e-4 * scale, rtol=0, msg=key
                    )


class TransferTestCase(SingleThreadTestCase):
    """The star encoder moves into the trail network."""

    def test_transfer(self):
        torch.manual_seed(7)
        star = StarCenterNet(base_channels=4, depth=3)
        images, heatmap, offset, offset_mask, _ = star_set(n=2)
        train(star, lambda m: star_loss(m(images), heatmap, offset, offset_mask), steps=2)
        unet = ResAttentionUNet(base_channels=4, depth=3, dropout=0.1)
        self.assertEqual(encoder_kwargs(star), encoder_kwargs(unet))
        decoder_before = {k: v.clone() for k, v in unet.decoder.state_dict().items()}
        self.assertIs(transfer_encoder(star, unet), unet)
        src, dst = star.encoder.state_dict(), unet.encoder.state_dict()
        self.assertEqual(list(src), list(dst))
        for key, value in src.items():
            self.assertTrue(torch.equal(value, dst[key]), msg=key)
        for key, value in unet.decoder.state_dict().items():
            self.assertTrue(torch.equal(value, decoder_before[key]), msg=key)
        # From a whole-network state dict, too.
        other = ResAttentionUNet(base_channels=4, depth=3)
        transfer_encoder(star.state_dict(), other)
        for key, value in src.items():
            self.assertTrue(torch.equal(value, other.encoder.state_dict()[key]), msg=key)

    def test_mismatch(self):
        star = StarCenterNet(base_channels=4, depth=3)
        for kwargs in (
            {"base_channels": 8, "depth": 3},
            {"base_channels": 4, "depth": 2},
            {"base_channels": 4, "depth": 3, "attention": "gate"},
            {"base_channels": 4, "depth": 3, "in_channels": 2},
        ):
            with self.subTest(**kwargs):
                unet = ResAttentionUNet(**kwargs)
                self.assertNotEqual(encoder_kwargs(star), encoder_kwargs(unet))
                before = {k: v.clone() for k, v in unet.state_dict().items()}
                with self.assertRaises(ValueError):
                    transfer_encoder(star, unet)
                for key, value in unet.state_dict().items():
                    self.assertTrue(torch.equal(value, before[key]), msg=key)
        with self.assertRaises(ValueError):
            transfer_encoder(build_model(tiny("HybridStarDetector")), ResAttentionUNet(base_channels=4))
        with self.assertRaises(ValueError):
            transfer_encoder(torch.nn.Linear(2, 2), ResAttentionUNet(base_channels=4))

    def test_progressive_unfreezing(self):
        unet = ResAttentionUNet(base_channels=4, depth=3)
        stages = unet.encoder_stages()
        frozen = set_encoder_trainable(unet, 1)
        self.assertEqual(len(frozen), len(stages) - 1)
        self.assertTrue(all(p.requires_grad for p in stages[-1].parameters()))
        self.assertFalse(any(p.requires_grad for s in stages[:-1] for p in s.parameters()))
        self.assertTrue(all(p.requires_grad for p in unet.decoder.parameters()))
        self.assertLess(count_parameters(unet, trainable_only=True), count_parameters(unet))
        set_encoder_trainable(unet, None)
        self.assertEqual(count_parameters(unet, trainable_only=True), count_parameters(unet))


class LineFilterTestCase(SingleThreadTestCase):
    """The fixed segment matched filters and the networks that take them."""

    def test_kernels_are_the_trail_model(self):
        from lsst.trail_detect.detection.postprocess import trail_model

        for length, n_angles, sigma in ((9.0, 8, 1.7), (25.0, 16, 1.2), (4.0, 3, 2.5)):
            kernels = line_filter_kernels(length, n_angles, sigma).numpy()
            size = kernels.shape[-1]
            self.assertEqual(kernels.shape, (n_angles, 1, size, size))
            self.assertEqual(size % 2, 1)
            self.assertGreaterEqual(size, length + 6 * sigma)
            half = size // 2
            y, x = np.mgrid[-half : half + 1, -half : half + 1].astype(float)
            for k in range(n_angles):
                theta = math.pi * k / n_angles
                dx, dy = 0.5 * length * math.cos(theta), 0.5 * length * math.sin(theta)
                model = trail_model(x, y, -dx, -dy, dx, dy, sigma)
                model /= np.sqrt(np.sum(model**2))
                np.testing.assert_allclose(kernels[k, 0], model, atol=1e-6)
                self.assertAlmostEqual(float(np.sum(kernels[k, 0] ** 2)), 1.0, places=5)
            # No subnormal float32 values (they slow CPU convolutions down several times).
            tiny = np.finfo(np.float32).tiny
            self.assertFalse(np.any((kernels != 0) & (np.abs(kernels) < tiny)))

    def test_responses(self):
        """Unit normal on white noise; the matched-filter SNR on a trail; isotropic on a star."""
        bank = LineFilterBank([[9, 8], [25, 16]], sigma=1.7, clip=5.0)
        self.assertEqual(bank.out_channels, 24)
        self.assertEqual(dict(bank.state_dict()), {})  # rebuilt from the architecture, never stored
        noise = torch.from_numpy(np.random.default_rng(3).normal(size=(1, 1, 400, 400)).astype(np.float32))
        out = bank(noise)
        self.assertEqual(out.shape, (1, 25, 400, 400))
        self.assertTrue(torch.equal(out[:, :1], noise))
        inner = out[0, 1:, 40:-40, 40:-40]
        np.testing.assert_allclose(inner.mean(dim=(1, 2)).numpy(), 0.0, atol=0.05)
        np.testing.assert_allclose(inner.std(dim=(1, 2)).numpy(), 1.0, atol=0.05)
        # A noiseless trail of length 60 at angle 4 of 16 (45 degrees): the response at its centre
        # in that channel is the signal-to-noise ratio of the kernel's piece of it, and the
        # largest over the angles.
        from lsst.trail_detect.detection.postprocess import trail_model

        y, x = np.mgrid[0:121, 0:121].astype(float)
        d = 30.0 / math.sqrt(2.0)
        trail = 40.0 * trail_model(x, y, 60 - d, 60 - d, 60 + d, 60 + d, 1.7)  # peak < clip
        self.assertLess(trail.max(), 5.0)
        response = bank(torch.from_numpy(trail.astype(np.float32))[None, None])[0, 1:, 60, 60].numpy()
        kernel = line_filter_kernels(25, 16, 1.7)[4, 0].numpy()
        half = kernel.shape[-1] // 2
        expected = float(np.sum(trail[60 - half : 61 + half, 60 - half : 61 + half] * kernel))
        self.assertAlmostEqual(float(response[8 + 4]), expected, places=3)
        self.assertEqual(int(np.argmax(response[8:])), 4)
        self.assertEqual(int(np.argmax(response[:8])), 2)
        # A star: every direction the same up to the pixel grid.
        star = 40.0 * trail_model(x, y, 60, 60, 60, 60, 1.7)
        response = bank(torch.from_numpy(star.astype(np.float32))[None, None])[0, 9:, 60, 60].numpy()
        self.assertLess(np.ptp(response) / response.mean(), 0.02)
        # The clip bounds what a bright star adds.
        bright = bank(torch.from_numpy(1e4 * star.astype(np.float32))[None, None])[0, 9:, 60, 60].numpy()
        self.assertLessEqual(bright.max(), 5.0 * float(kernel.sum()) + 1e-3)

    def test_network_with_line_filters(self):
        torch.manual_seed(3)
        plain = ResAttentionUNet(base_channels=4, depth=3)
        lined = ResAttentionUNet(base_channels=4, depth=3, line_filters=[[9, 4], [15, 6]], line_sigma=1.5)
        self.assertEqual(lined.architecture["line_filters"], [[9.0, 4], [15.0, 6]])
        self.assertEqual(lined.architecture["line_sigma"], 1.5)
        self.assertNotIn("line_filters", plain.architecture)
        rebuilt = build_model(json.loads(json.dumps(lined.architecture)))
        self.assertEqual(rebuilt.architecture, lined.architecture)
        self.assertEqual(encoder_kwargs(lined)["in_channels"], 11)
        for height, width in SIZES:
            self.assertEqual(lined(torch.randn(2, 1, height, width)).shape, (2, 1, height, width))
        # Widening a trained network: the new channels start at zero, so the output is unchanged.
        train(plain, lambda m: m(torch.randn(2, 1, 32, 32)).square().mean(), steps=2)
        plain.eval()
        lined.eval()
        key = "encoder." + input_conv_key(lined.encoder)
        self.assertIs(load_widened_state(lined, plain.state_dict(), widen=key), lined)
        stem = lined.state_dict()[key]
        self.assertTrue(torch.equal(stem[:, :1], plain.state_dict()[key]))
        self.assertFalse(stem[:, 1:].any())
        image = torch.randn(1, 1, 50, 70)
        with torch.no_grad():
            self.assertTrue(torch.equal(lined(image), plain(image)))
            prepared = prepare_for_inference(lined)
            torch.testing.assert_close(prepared(image), lined(image), rtol=1e-4, atol=1e-4)
        # Without naming the widened entry, or for any other mismatch, nothing is loaded.
        before = {k: v.clone() for k, v in lined.state_dict().items()}
        with self.assertRaisesRegex(ValueError, "shape mismatches"):
            load_widened_state(lined, plain.state_dict())
        with self.assertRaisesRegex(ValueError, "missing"):
            load_widened_state(lined, {k: v for k, v in plain.state_dict().items() if "head" not in k}, key)
        for k, v in lined.state_dict().items():
            self.assertTrue(torch.equal(v, before[k]), msg=k)
        # A star encoder moves into a trail network with line filters.
        star = StarCenterNet(base_channels=4, depth=3)
        transfer_encoder(star, lined)
        stem = lined.encoder.state_dict()[input_conv_key(lined.encoder)]
        self.assertTrue(torch.equal(stem[:, :1], star.encoder.state_dict()[input_conv_key(star.encoder)]))
        self.assertFalse(stem[:, 1:].any())

    def test_errors(self):
        for kwargs in (
            {"line_filters": []},
            {"line_filters": "9,8"},
            {"line_filters": [[9]]},
            {"line_filters": [[1, 8]]},
            {"line_filters": [[9, 1]]},
            {"line_filters": [[9, 8]], "line_sigma": 0.0},
            {"line_filters": [[9, 8]], "line_clip": -1.0},
        ):
            with self.subTest(**{k: str(v) for k, v in kwargs.items()}):
                with self.assertRaises(ValueError):
                    build_model({"name": "ResAttentionUNet", "base_channels": 4, "depth": 2, **kwargs})


class HybridTestCase(SingleThreadTestCase):
    """Candidates come only from the predicted heatmap; truth matching."""

    def test_forward_takes_only_the_image(self):
        parameters = list(inspect.signature(HybridStarDetector.forward).parameters)
        self.assertEqual(parameters, ["self", "x"])

    def test_candidates_are_heatmap_peaks(self):
        torch.manual_seed(8)
        model = HybridStarDetector(
            base_channels=4, blocks=[1, 1, 1], top_k=10, embed_dim=16, heads=2, layers=1
        )
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(2, 1, 41, 47))
        for i in range(2):
            prob = torch.sigmoid(out["heatmap"][i, 0]).numpy().astype(np.float64)
            peaks = prob == maximum_filter(prob, size=3, mode="constant", cval=-np.inf)
            ys, xs = np.nonzero(peaks)
            self.assertGreater(len(xs), 10)
            order = np.argsort(-prob[ys, xs], kind="stable")[:10]
            expected = {(int(xs[j]), int(ys[j])) for j in order}
            candidates = out["candidates"][i].numpy()
            self.assertEqual({(int(x), int(y)) for x, y in candidates}, expected)
            scores = prob[candidates[:, 1].astype(int), candidates[:, 0].astype(int)]
            self.assertTrue(np.all(np.diff(scores) <= 0))
        # The untrained refiner returns the CenterNet values at the candidates.
        xy = out["candidates"].long()
        for i in range(2):
            logits = out["heatmap"][i, 0, xy[i, :, 1], xy[i, :, 0]]
            self.assertFloatsAlmostEqual(out["candidate_logits"][i].numpy(), logits.numpy(), atol=1e-6)
            offsets = out["offset"][i][:, xy[i, :, 1], xy[i, :, 0]].T
            self.assertFloatsAlmostEqual(out["candidate_offset"][i].numpy(), offsets.numpy(), atol=1e-6)

    def test_heatmap_peaks(self):
        heatmap = torch.full((1, 1, 6, 8), -5.0)
        heatmap[0, 0, 1, 2] = 3.0
        heatmap[0, 0, 4, 6] = 1.0
        heatmap[0, 0, 4, 5] = 0.5  # next to a higher peak: suppressed
        xy = heatmap_peaks(heatmap, 2)
        self.assertEqual(xy[0].tolist(), [[2, 1], [6, 4]])
        self.assertEqual(tuple(heatmap_peaks(heatmap[:, 0], 100).shape), (1, 48, 2))

    def test_loss_targets(self):
        candidates = torch.tensor(
            [
                [[10.0, 10.0], [11.0, 10.0], [30.0, 5.0], [50.0, 50.0]],
                [[0.0, 0.0], [3.0, 4.0], [20.0, 20.0], [21.0, 21.0]],
            ]
        )
        truth = [
            np.array([[10.6, 10.2], [30.4, 6.2], [90.0, 90.0]]),  # (30, 5) is 1.26 px from its truth
            np.zeros((0, 2)),
        ]
        labels, offsets = loss_targets_for_candidates(candidates, truth, radius=1.5)
        self.assertEqual(labels.tolist(), [[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
        # (11, 10) is closer to (10.6, 10.2) than (10, 10) is: it takes it, one to one.
        self.assertFloatsAlmostEqual(offsets[0, 1].numpy(), np.array([-0.4, 0.2]), atol=1e-5)
        self.assertFloatsAlmostEqual(offsets[0, 2].numpy(), np.array([0.4, 1.2]), atol=1e-5)
        self.assertEqual(
            float(offsets[0, 0].abs().sum() + offsets[0, 3].abs().sum() + offsets[1].abs().sum()), 0
        )
        labels, _ = loss_targets_for_candidates(candidates, truth, radius=1.0)
        self.assertEqual(labels[0].tolist(), [0.0, 1.0, 0.0, 0.0])
        # Two truths near one candidate pair: both matched, each to its nearest.
        labels, offsets = loss_targets_for_candidates(
            candidates[1:], [torch.tensor([[21.2, 21.0], [20.0, 19.5]])], radius=1.5
        )
        self.assertEqual(labels.tolist(), [[0.0, 0.0, 1.0, 1.0]])
        self.assertFloatsAlmostEqual(offsets[0, 2].numpy(), np.array([0.0, -0.5]), atol=1e-5)
        self.assertFloatsAlmostEqual(offsets[0, 3].numpy(), np.array([0.2, 0.0]), atol=1e-5)
        with self.assertRaises(ValueError):
            loss_targets_for_candidates(candidates, truth[:1])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
