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

"""Loss functions of trail segmentation and star detection."""

import math
import unittest

import torch

import lsst.utils.tests
from lsst.trail_detect.training.losses import (
    SegmentationLoss,
    StarDetectionLoss,
    centernet_focal_loss,
    focal_tversky_loss,
    instance_balanced_weights,
    offset_l1_loss,
    pos_weight_from_fraction,
    soft_dice_loss,
    weighted_bce,
)

LOG2 = math.log(2.0)


def random_batch(seed: int = 0, shape=(3, 1, 8, 8)):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape, generator=gen, dtype=torch.float64)
    target = (torch.rand(shape, generator=gen, dtype=torch.float64) < 0.2).to(torch.float64)
    weight = torch.rand(shape, generator=gen, dtype=torch.float64)
    return logits, target, weight


def assert_finite_grad(test, loss_fn, logits, *args, **kwargs):
    logits = logits.clone().requires_grad_(True)
    loss = loss_fn(logits, *args, **kwargs)
    test.assertEqual(loss.dim(), 0)
    test.assertTrue(torch.isfinite(loss))
    loss.backward()
    test.assertIsNotNone(logits.grad)
    test.assertTrue(torch.all(torch.isfinite(logits.grad)))
    return loss.detach(), logits.grad


class BCETestCase(lsst.utils.tests.TestCase):
    def test_values(self):
        zeros = torch.zeros(2, 1, 4, 4)
        target = (torch.arange(32).reshape(2, 1, 4, 4) % 3 == 0).float()
        self.assertAlmostEqual(float(weighted_bce(zeros, target)), LOG2, places=6)
        x = torch.tensor([[[[2.0, -1.0]]]])
        y = torch.tensor([[[[1.0, 0.0]]]])
        expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(-1.0))) / 2
        self.assertAlmostEqual(float(weighted_bce(x, y)), expected, places=6)

    def test_pos_weight(self):
        x = torch.zeros(1, 1, 1, 2)
        y = torch.tensor([[[[1.0, 0.0]]]])
        # Positive pixel: 3 log 2, negative pixel unchanged: log 2.
        self.assertAlmostEqual(float(weighted_bce(x, y, pos_weight=3.0)), 2 * LOG2, places=6)
        self.assertAlmostEqual(float(weighted_bce(x, y, pos_weight=torch.tensor(3.0))), 2 * LOG2, places=6)
        negatives = torch.zeros_like(y)
        self.assertAlmostEqual(float(weighted_bce(x, negatives, pos_weight=3.0)), LOG2, places=6)

    def test_weights(self):
        x = torch.tensor([[[[2.0, -5.0, 7.0]]]])
        y = torch.tensor([[[[1.0, float("nan"), 0.0]]]])
        w = torch.tensor([[[[1.0, 0.0, 3.0]]]])
        expected = (math.log1p(math.exp(-2.0)) + 3 * math.log1p(math.exp(7.0))) / 4
        self.assertAlmostEqual(float(weighted_bce(x, y, w)), expected, places=5)
        loss, grad = assert_finite_grad(self, weighted_bce, x, y, w)
        self.assertEqual(float(grad[0, 0, 0, 1]), 0.0)
        # (N, H, W) weights and targets next to (N, 1, H, W) logits.
        self.assertAlmostEqual(float(weighted_bce(x, y[:, 0], w[:, 0])), expected, places=5)

    def test_all_zero_weight(self):
        logits, target, _ = random_batch()
        loss, grad = assert_finite_grad(self, weighted_bce, logits, target, torch.zeros_like(target))
        self.assertEqual(float(loss), 0.0)
        self.assertTrue(torch.all(grad == 0))

    def test_gradient(self):
        logits, target, weight = random_batch()
        assert_finite_grad(self, weighted_bce, logits, target, weight, pos_weight=10.0)
        with self.assertRaises(ValueError):
            weighted_bce(logits, target, torch.ones(2, 2))


class OverlapLossTestCase(lsst.utils.tests.TestCase):
    def test_dice_extremes(self):
        _, target, _ = random_batch(1)
        perfect = 30.0 * (2 * target - 1)
        self.assertLess(float(soft_dice_loss(perfect, target)), 1e-6)
        inverted = -perfect
        n = target[0].numel()
        # Dice = eps / (n + eps) with no overlap: loss n / (n + 1).
        self.assertAlmostEqual(float(soft_dice_loss(inverted, target)), n / (n + 1), places=5)
        self.assertGreater(float(soft_dice_loss(inverted, target)), 0.98)

    def test_dice_hand_value(self):
        x = torch.zeros(1, 1, 2, 2)
        y = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
        # p = 0.5: TP 0.5, FN 0.5, FP 1.5; Dice (1 + 1) / (1 + 2 + 1) = 0.5.
        self.assertAlmostEqual(float(soft_dice_loss(x, y, eps=1.0)), 0.5, places=6)
        # Tversky with alpha 0.7, beta 0.3: TI = 1.5 / 2.3.
        expected = (1 - 1.5 / 2.3) ** 0.75
        self.assertAlmostEqual(float(focal_tversky_loss(x, y)), expected, places=6)

    def test_tversky_equals_dice(self):
        logits, target, weight = random_batch(2)
        dice = soft_dice_loss(logits, target, weight, eps=1.0)
        tversky = focal_tversky_loss(logits, target, weight, alpha=0.5, beta=0.5, gamma=1.0, eps=0.5)
        self.assertAlmostEqual(float(dice), float(tversky), places=12)
        # gamma applies per sample before the mean.
        per_sample = [
            float(focal_tversky_loss(logits[i : i + 1], target[i : i + 1], weight[i : i + 1], gamma=0.5))
            for i in range(3)
        ]
        self.assertAlmostEqual(
            float(focal_tversky_loss(logits, target, weight, gamma=0.5)), sum(per_sample) / 3, places=12
        )

    def test_tversky_alpha_penalizes_false_negatives(self):
        # Two positives found in both cases; two missed (FN = 2) or two extra (FP = 2).
        four = torch.zeros(1, 1, 4, 4)
        four[..., 1, :] = 1.0
        found_two = torch.full_like(four, -30.0)
        found_two[..., 1, :2] = 30.0
        two = torch.zeros_like(four)
        two[..., 1, :2] = 1.0
        found_four = torch.where(four > 0, 30.0, -30.0)

        def loss(logits, target, alpha, beta):
            return float(focal_tversky_loss(logits, target, alpha=alpha, beta=beta, gamma=1.0, eps=1.0))

        # TI = (TP + 1) / (TP + alpha FN + beta FP + 1) with TP = 2.
        self.assertAlmostEqual(loss(found_two, four, 0.7, 0.3), 1 - 3 / (3 + 2 * 0.7), places=6)
        self.assertAlmostEqual(loss(found_four, two, 0.7, 0.3), 1 - 3 / (3 + 2 * 0.3), places=6)
        self.assertGreater(loss(found_two, four, 0.7, 0.3), loss(found_four, two, 0.7, 0.3))
        self.assertLess(loss(found_two, four, 0.3, 0.7), loss(found_four, two, 0.3, 0.7))

    def test_weights(self):
        logits, target, weight = random_batch(3)
        # Zero-weight pixels are ignored, whatever they hold.
        weight[..., :4, :] = 0.0
        changed_logits = logits.clone()
        changed_logits[..., :4, :] = 100.0
        changed_target = target.clone()
        changed_target[..., :4, :] = float("nan")
        for fn in (soft_dice_loss, focal_tversky_loss):
            with self.subTest(fn.__name__):
                self.assertAlmostEqual(
                    float(fn(logits, target, weight)),
                    float(fn(changed_logits, changed_target, weight)),
                    places=12,
                )
        # A sample with no weight does not dilute the mean.
        weight[1] = 0.0
        both = float(soft_dice_loss(logits, target, weight))
        kept = float(soft_dice_loss(logits[[0, 2]], target[[0, 2]], weight[[0, 2]]))
        self.assertAlmostEqual(both, kept, places=12)

    def test_all_zero_weight_and_gradients(self):
        logits, target, weight = random_batch(4)
        for fn in (soft_dice_loss, focal_tversky_loss):
            with self.subTest(fn.__name__):
                loss, grad = assert_finite_grad(self, fn, logits, target, torch.zeros_like(weight))
                self.assertEqual(float(loss), 0.0)
                assert_finite_grad(self, fn, logits, target, weight)
                # Near-perfect prediction: gamma < 1 must not give infinite gradients.
                assert_finite_grad(self, fn, 50.0 * (2 * target - 1), target)

    def test_segmentation_loss(self):
        logits, target, weight = random_batch(5)
        loss = SegmentationLoss(bce=0.5, dice=2.0, focal_tversky=1.0, pos_weight=4.0)
        total = loss(logits, target[:, 0].to(torch.uint8), weight[:, 0])
        expected = (
            0.5 * weighted_bce(logits, target, weight, pos_weight=4.0)
            + 2.0 * soft_dice_loss(logits, target, weight)
            + 1.0 * focal_tversky_loss(logits, target, weight)
        )
        self.assertAlmostEqual(float(total), float(expected), places=10)
        self.assertEqual(set(loss.last_terms), {"bce", "dice", "focal_tversky", "total"})
        self.assertIsInstance(loss.last_terms["dice"], float)
        self.assertAlmostEqual(loss.last_terms["total"], float(expected), places=10)
        self.assertAlmostEqual(
            loss.last_terms["dice"], float(soft_dice_loss(logits, target, weight)), places=10
        )
        assert_finite_grad(self, loss, logits, target, torch.zeros_like(weight))

        config = loss.config()
        self.assertEqual(config["pos_weight"], 4.0)
        again = SegmentationLoss.from_config(config)
        self.assertEqual(again.config(), config)
        default = SegmentationLoss.from_config({})
        default(logits, target)
        self.assertEqual(set(default.last_terms), {"bce", "dice", "total"})
        with self.assertRaises(ValueError):
            SegmentationLoss.from_config({"bce": 1.0, "lovasz": 1.0})
        with self.assertRaises(ValueError):
            SegmentationLoss(bce=0.0, dice=0.0)
        with self.assertRaises(ValueError):
            SegmentationLoss(bce=-1.0)

    def test_pos_weight_from_fraction(self):
        self.assertAlmostEqual(pos_weight_from_fraction(0.01), 99.0)
        self.assertAlmostEqual(pos_weight_from_fraction(0.5), 1.0)
        self.assertEqual(pos_weight_from_fraction(0.0), 100.0)
        self.assertEqual(pos_weight_from_fraction(1e-6, cap=50.0), 50.0)
        self.assertAlmostEqual(pos_weight_from_fraction(0.999, cap=100.0), 0.01)
        for bad in (-0.1, 1.5, float("nan")):
            with self.assertRaises(ValueError):
                pos_weight_from_fraction(bad)
        with self.assertRaises(ValueError):
            pos_weight_from_fraction(0.1, cap=0.5)


def gaussian_heatmap(size: int, peaks, sigma: float = 1.5) -> torch.Tensor:
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64), indexing="ij"
    )
    heat = torch.zeros(size, size, dtype=torch.float64)
    for y, x in peaks:
        heat = torch.maximum(heat, torch.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)))
    return heat[None, None]


def logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-4, 1 - 1e-4)
    return torch.log(p / (1 - p))


class StarLossTestCase(lsst.utils.tests.TestCase):
    def test_focal_hand_value(self):
        target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])
        logits = torch.zeros_like(target)
        # p = 0.5 everywhere: each pixel contributes 0.25 log 2, one peak.
        self.assertAlmostEqual(float(centernet_focal_loss(logits, target)), LOG2, places=6)
        # Penalty reduction near a peak: (1 - 0.5)^4 on that pixel.
        target[0, 0, 1, 1] = 0.5
        expected = (3 * 0.25 + 0.25 / 16) * LOG2
        self.assertAlmostEqual(float(centernet_focal_loss(logits, target)), expected, places=6)
        # No peak: normalized by 1.
        self.assertAlmostEqual(float(centernet_focal_loss(logits, torch.zeros_like(target))), LOG2, places=6)
        # Two peaks: normalized by 2.
        target = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
        self.assertAlmostEqual(float(centernet_focal_loss(logits, target)), LOG2 / 2, places=6)

    def test_focal_prefers_correct_heatmap(self):
        target = gaussian_heatmap(16, [(5, 5), (11, 9)])
        correct = logit(target)
        shifted = logit(gaussian_heatmap(16, [(7, 8), (13, 12)]))
        flat = torch.full_like(target, -2.0)
        good = float(centernet_focal_loss(correct, target))
        self.assertLess(good, float(centernet_focal_loss(shifted, target)))
        self.assertLess(good, float(centernet_focal_loss(flat, target)))
        assert_finite_grad(self, centernet_focal_loss, shifted, target)
        # Weights: masking the region around a peak removes it from the count.
        weight = torch.ones_like(target)
        weight[..., 8:, :] = 0.0
        masked = float(centernet_focal_loss(shifted, target, weight))
        top = float(centernet_focal_loss(shifted[..., :8, :], target[..., :8, :]))
        self.assertAlmostEqual(masked, top, places=10)
        loss, grad = assert_finite_grad(self, centernet_focal_loss, shifted, target, torch.zeros_like(target))
        self.assertEqual(float(loss), 0.0)

    def test_offset_l1(self):
        pred = torch.zeros(1, 2, 4, 4)
        target = torch.full((1, 2, 4, 4), float("nan"))
        target[0, :, 1, 2] = torch.tensor([0.25, -0.5])
        target[0, :, 3, 0] = torch.tensor([0.1, 0.1])
        mask = torch.zeros(1, 4, 4)
        mask[0, 1, 2] = 1.0
        pred[0, :, 0, 0] = 100.0  # Unmasked: ignored.
        self.assertAlmostEqual(float(offset_l1_loss(pred, target, mask)), 0.375, places=6)
        mask[0, 3, 0] = 1.0
        self.assertAlmostEqual(float(offset_l1_loss(pred, target, mask[:, None])), (0.75 + 0.2) / 4, places=6)
        loss, grad = assert_finite_grad(self, offset_l1_loss, pred, target, mask)
        self.assertTrue(torch.all(grad[0, :, 0, 0] == 0))
        loss, grad = assert_finite_grad(self, offset_l1_loss, pred, target, torch.zeros_like(mask))
        self.assertEqual(float(loss), 0.0)

    def test_star_detection_loss(self):
        heat_target = gaussian_heatmap(16, [(5, 5), (11, 9)]).float()
        offset_target = torch.zeros(1, 2, 16, 16)
        offset_target[0, :, 5, 5] = torch.tensor([0.3, -0.2])
        offset_target[0, :, 11, 9] = torch.tensor([-0.1, 0.4])
        offset_mask = (heat_target[:, 0] >= 1).to(torch.uint8)
        targets = {"heatmap": heat_target, "offset": offset_target, "offset_mask": offset_mask}
        output = {
            "heatmap": torch.zeros(1, 1, 16, 16, requires_grad=True),
            "offset": torch.zeros(1, 2, 16, 16, requires_grad=True),
        }
        loss = StarDetectionLoss(heatmap=1.0, offset=2.0)
        total = loss(output, targets)
        expected_heat = float(centernet_focal_loss(output["heatmap"].detach(), heat_target))
        expected_offset = (0.3 + 0.2 + 0.1 + 0.4) / 4
        self.assertAlmostEqual(loss.last_terms["heatmap"], expected_heat, places=5)
        self.assertAlmostEqual(loss.last_terms["offset"], expected_offset, places=6)
        self.assertAlmostEqual(total.item(), expected_heat + 2 * expected_offset, places=5)
        self.assertAlmostEqual(loss.last_terms["total"], total.item(), places=6)
        total.backward()
        for name in ("heatmap", "offset"):
            self.assertTrue(torch.all(torch.isfinite(output[name].grad)), name)
        # A per-pixel weight masks both terms.
        weight = torch.zeros(1, 16, 16)
        total = loss(output, targets, weight)
        self.assertEqual(total.item(), 0.0)
        self.assertEqual(StarDetectionLoss.from_config(loss.config()).config(), loss.config())
        with self.assertRaises(ValueError):
            StarDetectionLoss.from_config({"size": 1.0})


class HybridCandidateLossTestCase(lsst.utils.tests.TestCase):
    def test_candidate_head_learns(self):
        """The hybrid detector's candidate terms enter the loss and fall with a few steps of training."""
        import numpy as np
        import torch

        from lsst.trail_detect.models.networks import build_model, default_architecture
        from lsst.trail_detect.tiles.star_targets import star_targets
        from lsst.trail_detect.training.losses import StarDetectionLoss

        torch.manual_seed(0)
        rng = np.random.default_rng(0)
        size = 64
        xs, ys = rng.uniform(5, 59, 8), rng.uniform(5, 59, 8)
        targets = star_targets(xs, ys, (size, size), sigma=1.5)
        yy, xx = np.mgrid[:size, :size]
        image = sum(20 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2)) for x, y in zip(xs, ys))
        image = image + rng.normal(0, 1, (size, size))
        x = torch.tensor(image[None, None], dtype=torch.float32).repeat(2, 1, 1, 1)
        tgt = {
            k: torch.tensor(np.asarray(v)[None]).repeat(2, *([1] * np.asarray(v).ndim))
            for k, v in targets.items()
            if k != "selected"
        }
        model = build_model(
            default_architecture("hybrid", "compact", top_k=16, base_channels=8, blocks=[1, 1, 1, 1])
        )
        optimizer = torch.optim.Adam(model.parameters(), 1e-3)
        loss_fn = StarDetectionLoss()
        history = []
        for _ in range(25):
            loss = loss_fn(model(x), tgt)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            history.append(dict(loss_fn.last_terms))
        self.assertIn("candidate", history[0])
        self.assertLess(history[-1]["candidate"], history[0]["candidate"])
        self.assertLess(history[-1]["candidate_offset"], history[0]["candidate_offset"])


class InstanceBalanceTestCase(lsst.utils.tests.TestCase):
    def test_factors(self):
        """Each component's weights scale by clip((ref / n) ** p, 1, max); background is unchanged."""
        import numpy as np

        mask = np.zeros((2, 40, 40), dtype=np.float32)
        mask[0, 5, 5:30] = 1  # 25 pixels
        mask[0, 20:22, 2:38] = 1  # 72 pixels
        mask[1, 10, 10:14] = 1  # 4 pixels
        weight = np.full(mask.shape, 0.5, dtype=np.float32)
        weight[0, 5, 5] = 0.0  # a bad pixel stays at 0
        out = instance_balanced_weights(mask, weight, power=0.5, reference_pixels=100.0, max_factor=3.0)
        self.assertEqual(out.dtype, np.float32)
        self.assertFloatsAlmostEqual(out[0, 5, 6], 0.5 * 2.0, rtol=1e-6)
        self.assertEqual(out[0, 5, 5], 0.0)
        self.assertFloatsAlmostEqual(out[0, 20, 10], 0.5 * math.sqrt(100 / 72), rtol=1e-6)
        self.assertFloatsAlmostEqual(out[1, 10, 11], 0.5 * 3.0, rtol=1e-6)  # capped
        background = mask == 0
        self.assertTrue(np.all(out[background] == weight[background]))
        # Components at or above the reference keep their weights; power 0 changes nothing.
        big = instance_balanced_weights(mask, weight, power=1.0, reference_pixels=4.0)
        self.assertTrue(np.array_equal(big, weight))
        self.assertTrue(np.array_equal(instance_balanced_weights(mask, weight, power=0.0), weight))
        self.assertTrue(np.array_equal(weight[0, 5, 6:8], [0.5, 0.5]))  # input untouched
        # A single 2-d tile works too.
        single = instance_balanced_weights(
            mask[1], weight[1], power=0.5, reference_pixels=100.0, max_factor=3.0
        )
        self.assertTrue(np.array_equal(single, out[1]))

    def test_bad_settings(self):
        import numpy as np

        mask = np.zeros((4, 4))
        with self.assertRaisesRegex(ValueError, "shape"):
            instance_balanced_weights(mask, np.ones((4, 5)))
        with self.assertRaisesRegex(ValueError, "max_factor"):
            instance_balanced_weights(mask, np.ones((4, 4)), max_factor=0.5)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
