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

"""How well can the stack's own sources be sorted into trails, stars and galaxies?

Usage::

    python benchmarks/stamp_classifier.py --train REPO COLLECTION [--train REPO COLLECTION ...]
                                          --test REPO COLLECTION [--cnn REPO COLLECTION]
                                          [--epochs 12] [--seed 0]

A second route to short trails: take every source of ``injected_source``
(the stack-like 5 sigma detection run on the injected images), cut a 33 x 33
pixel stamp of image / sqrt(variance) around it, and train a small CNN to
say whether the source lies on an injected trail (within max(2, 1.5 sigma)
pixels of its segment). Images of the last eighth of the training
collections are held out for validation; the test collections are only
scored.

Prints, for validation and test, the fraction of trails with at least one
source scored above the cut that lets through 10 of the non-trail sources
per 4k x 4k-equivalent detector (the issue's false-positive budget), per
length and ``nu_det`` bin, beside the shape-limited ideal detector
(`~lsst.trail_detect.evaluation.metrics.ideal_shape_completeness`) for the
same trails; then the truth classes (`visit_image_truth`) of the sources
that pass the cut on the test images. Trails the stack missed count as
missed.

With ``--cnn``, the CNN's ``trail_matches`` of the same test images (made
with ``min_score`` 0) are read too, and the budget of 10 false positives
per 4k detector is split between the CNN and the classifier: the union of
what each finds at its share is printed per ``nu_det`` bin, counting the
false positives of both (an object flagged by both counts twice).
"""

import argparse
import collections
import time

import numpy as np

HALF = 16
FP_PER_4K = 10.0
PIXELS_4K = 4096 * 4096
LENGTH_BINS = ((0, 10), (10, 20), (20, 1e9))
NU_BINS = ((2, 5), (5, 10), (10, 31))


def gather(repo, collection, image_offset=0):
    """Stamps, labels and trail properties of every stack source of a collection."""
    from scipy.spatial import cKDTree

    from lsst.daf.butler import Butler
    from lsst.trail_detect.geometry import segment_distance
    from lsst.trail_detect.imageutils import psf_sigma

    butler = Butler(repo)
    refs = sorted(
        butler.query_datasets("injected_visit_image", collections=collection, limit=None),
        key=lambda r: (r.dataId["visit"], r.dataId["detector"]),
    )
    if not refs:
        raise SystemExit(f"no injected_visit_image in {collection!r} of {repo}.")
    out = collections.defaultdict(list)
    trails = collections.defaultdict(list)
    for k, ref in enumerate(refs):
        image = butler.get(ref)
        sources = butler.get("injected_source", ref.dataId, collections=collection)
        truth = butler.get("injected_visit_image_catalog", ref.dataId, collections=collection)
        scene = butler.get("visit_image_truth", ref.dataId, collections=collection)
        truth = truth[truth["injection_flag"] == 0]
        y0, x0 = image.yx0
        sigma = psf_sigma(image)
        variance = image.variance.array
        snr = image.image.array / np.sqrt(np.where(variance > 0, variance, np.inf))
        padded = np.pad(snr.astype(np.float32), HALF)
        x = np.asarray(sources["x"], dtype=float) - x0
        y = np.asarray(sources["y"], dtype=float) - y0
        # Distance of every source from every trail: (sources, trails).
        distance = segment_distance(
            x[:, None],
            y[:, None],
            np.asarray(truth["x_start_clipped"]) - x0,
            np.asarray(truth["y_start_clipped"]) - y0,
            np.asarray(truth["x_end_clipped"]) - x0,
            np.asarray(truth["y_end_clipped"]) - y0,
        )
        on_trail = (distance <= max(2.0, 1.5 * sigma)) if len(truth) else np.zeros((len(x), 0), bool)
        label = on_trail.any(axis=1)
        nearest = np.argmin(distance, axis=1) if len(truth) else np.zeros(len(x), int)
        xi, yi = np.rint(x).astype(int), np.rint(y).astype(int)
        for i in range(len(x)):
            out["stamps"].append(padded[yi[i] : yi[i] + 2 * HALF + 1, xi[i] : xi[i] + 2 * HALF + 1])
        out["label"].append(label)
        out["trail"].append(np.where(label, nearest, -1) + 100_000 * (k + image_offset))
        out["sigma"].append(np.full(len(x), sigma, dtype=np.float32))
        out["image"].append(np.full(len(x), k + image_offset))
        if len(scene):
            dist, idx = cKDTree(np.c_[scene["x"], scene["y"]]).query(np.c_[sources["x"], sources["y"]])
            kind = np.where(dist < 3, np.asarray(scene["type"]).astype(str)[idx], "nothing")
        else:
            kind = np.full(len(x), "nothing")
        out["kind"].append(kind)
        trails["id"].append(np.arange(len(truth)) + 100_000 * (k + image_offset))
        trails["image"].append(np.full(len(truth), k + image_offset))
        for name in ("length_clipped", "nu_det", "nu_opt"):
            trails[name].append(np.asarray(truth[name], dtype=float))
        trails["sigma"].append(np.full(len(truth), sigma))
        trails["visit"].append(np.full(len(truth), int(ref.dataId["visit"])))
        trails["detector"].append(np.full(len(truth), int(ref.dataId["detector"])))
        trails["injection_id"].append(np.asarray(truth["injection_id"], dtype=np.int64))
        pixels = image.image.array.size
    data = {k: (np.stack(v) if k == "stamps" else np.concatenate(v)) for k, v in out.items()}
    trail_data = {k: np.concatenate(v) for k, v in trails.items()}
    return data, trail_data, len(refs), pixels


def _concat(parts):
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _subset(d, keep):
    return {k: v[keep] for k, v in d.items()}


def network(width=16):
    """A small CNN on one stamp plus the PSF sigma."""
    import torch
    from torch import nn

    def block(i, o):
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
            nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
        )  # fmt: skip

    class StampNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                block(1, width), nn.MaxPool2d(2), block(width, 2 * width), nn.MaxPool2d(2),
                block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            )  # fmt: skip
            self.head = nn.Sequential(nn.Linear(4 * width + 1, 64), nn.ReLU(), nn.Linear(64, 1))

        def forward(self, x, sigma):
            return self.head(torch.cat([self.features(x), sigma[:, None]], 1))[:, 0]

    return StampNet()


def _inputs(stamps):
    return np.arcsinh(stamps / 3.0).astype(np.float32)[:, None]


def score(net, data):
    import torch

    net.eval()
    x, sigma = _inputs(data["stamps"]), (data["sigma"] - 2.2).astype(np.float32)
    with torch.no_grad():
        out = [
            torch.sigmoid(net(torch.from_numpy(x[i : i + 2048]), torch.from_numpy(sigma[i : i + 2048])))
            for i in range(0, len(x), 2048)
        ]
    net.train()
    return torch.cat(out).numpy()


def report(name, data, trails, scores, n_images, pixels):
    """Completeness at the false-positive budget per bin, beside the shape-limited ideal."""
    from lsst.trail_detect.evaluation.metrics import ideal_shape_completeness, score_at_fp_budget

    n_4k = n_images * pixels / PIXELS_4K
    allowed = int(np.floor(FP_PER_4K * n_4k + 1e-9))
    cut = score_at_fp_budget(scores[~data["label"]], n_4k, FP_PER_4K)
    found = _found_trails(data, trails, scores, cut)
    ideal = ideal_shape_completeness(trails["nu_opt"], trails["length_clipped"], trails["sigma"])
    print(f"{name}: {n_images} images, cut {cut:.4f} ({allowed} non-trail sources pass)")
    print(f"  {'length':>9} {'nu_det':>7} {'trails':>6} {'classifier':>10} {'ideal+shape':>11}")
    for lo, hi in LENGTH_BINS:
        for a, b in NU_BINS:
            m = (trails["length_clipped"] >= lo) & (trails["length_clipped"] < hi)
            m &= (trails["nu_det"] >= a) & (trails["nu_det"] < b)
            if m.any():
                label = f"{lo:g}-{hi:g}" if hi < 1e9 else f">={lo:g}"
                cells = f"{m.sum():>6} {found[m].mean():>10.3f} {ideal[m].mean():>11.3f}"
                print(f"  {label:>9} {f'{a}-{b}':>7} {cells}")
    for a, b in NU_BINS:
        m = (trails["nu_det"] >= a) & (trails["nu_det"] < b)
        print(f"  all lengths nu_det {a}-{b}: {found[m].mean():.3f} of {m.sum()}")
    passed = (~data["label"]) & (scores >= cut)
    classes = dict(collections.Counter(data["kind"][passed]))
    print(f"  non-trail sources passing the cut, by truth class: {classes}")


def _found_trails(data, trails, scores, cut):
    """Whether each trail has at least one of its sources scored at or above ``cut``."""
    return np.isin(trails["id"], data["trail"][data["label"] & (scores >= cut)])


def report_union(data, trails, scores, n_images, pixels, cnn_repo, cnn_collection):
    """Completeness per nu_det bin of the CNN, the classifier and their union at split budgets."""
    from astropy.table import vstack

    from lsst.daf.butler import Butler
    from lsst.trail_detect.evaluation.metrics import score_at_fp_budget

    butler = Butler(cnn_repo)
    refs = butler.query_datasets("trail_matches", collections=cnn_collection, limit=None)
    matches = vstack([butler.get(ref) for ref in refs], metadata_conflicts="silent")
    truth = matches[matches["row_type"] == "truth"]
    cnn_false = np.asarray(matches["score"][matches["row_type"] == "false_positive"], dtype=float)
    cnn_score = {
        (int(v), int(d), int(i)): (float(s) if found else -np.inf)
        for v, d, i, found, s in zip(
            truth["visit"], truth["detector"], truth["injection_id"], truth["detected"], truth["score"]
        )
    }
    keys = zip(trails["visit"], trails["detector"], trails["injection_id"])
    trail_cnn = np.array([cnn_score.get((int(v), int(d), int(i)), np.nan) for v, d, i in keys])
    if np.isnan(trail_cnn).any():
        raise SystemExit(f"{int(np.isnan(trail_cnn).sum())} test trails have no row in {cnn_collection}.")
    n_4k = n_images * pixels / PIXELS_4K
    stamp_false = scores[~data["label"]]
    print(f"CNN ({cnn_collection}) and classifier sharing {FP_PER_4K:g} FP per 4k detector:")
    print(f"  {'CNN FP':>6} {'stamps FP':>9}   " + "  ".join(f"nu_det {a}-{b}" for a, b in NU_BINS))
    for share in (1.0, 0.75, 0.5, 0.25, 0.0):
        found = (trail_cnn >= score_at_fp_budget(cnn_false, n_4k, share * FP_PER_4K)) & (share > 0)
        stamp_cut = score_at_fp_budget(stamp_false, n_4k, (1 - share) * FP_PER_4K)
        found |= _found_trails(data, trails, scores, stamp_cut) & (share < 1)
        cells = "  ".join(
            f"{found[(trails['nu_det'] >= a) & (trails['nu_det'] < b)].mean():>11.3f}" for a, b in NU_BINS
        )
        print(f"  {share * FP_PER_4K:>6.1f} {(1 - share) * FP_PER_4K:>9.1f}   {cells}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", nargs=2, action="append", metavar=("REPO", "COLLECTION"), required=True)
    parser.add_argument("--test", nargs=2, action="append", metavar=("REPO", "COLLECTION"), required=True)
    parser.add_argument("--cnn", nargs=2, metavar=("REPO", "COLLECTION"), help="CNN trail_matches.")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=200, help="Batches of 256 stamps per epoch.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)

    train_parts, train_trails, val_parts, val_trails, n_val = [], [], [], [], 0
    for i, (repo, coll) in enumerate(args.train):
        data, trails, n, pixels = gather(repo, coll, image_offset=1000 * i)
        held = (data["image"] - 1000 * i) >= n - n // 8
        held_trails = (trails["image"] - 1000 * i) >= n - n // 8
        train_parts.append(_subset(data, ~held))
        train_trails.append(_subset(trails, ~held_trails))
        val_parts.append(_subset(data, held))
        val_trails.append(_subset(trails, held_trails))
        n_val += n // 8
    train, val, val_t = _concat(train_parts), _concat(val_parts), _concat(val_trails)
    test_parts, test_trails, n_test = [], [], 0
    for i, (repo, coll) in enumerate(args.test):
        data, trails, n, test_pixels = gather(repo, coll, image_offset=1000 * (i + len(args.train)))
        test_parts.append(data)
        test_trails.append(trails)
        n_test += n
    test, test_t = _concat(test_parts), _concat(test_trails)
    print(
        f"training stamps: {int(train['label'].sum())} on trails, {int((~train['label']).sum())} not; "
        f"validation {n_val} images, test {n_test} images"
    )

    net = network()
    optimizer = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    x_all, y_all = _inputs(train["stamps"]), train["label"].astype(np.float32)
    s_all = (train["sigma"] - 2.2).astype(np.float32)
    positives, negatives = np.flatnonzero(train["label"]), np.flatnonzero(~train["label"])
    start = time.perf_counter()
    for epoch in range(args.epochs):
        total = 0.0
        for _ in range(args.steps):
            idx = np.r_[rng.choice(positives, 128), rng.choice(negatives, 128)]
            x = np.rot90(x_all[idx], int(rng.integers(4)), axes=(2, 3))
            if rng.random() < 0.5:
                x = x[..., ::-1]
            logits = net(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(s_all[idx]))
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(y_all[idx]))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / args.steps:.4f}", flush=True)
    print(f"training took {time.perf_counter() - start:.0f} s")
    report("validation", val, val_t, score(net, val), n_val, pixels)
    test_scores = score(net, test)
    report("test", test, test_t, test_scores, n_test, test_pixels)
    if args.cnn:
        report_union(test, test_t, test_scores, n_test, test_pixels, *args.cnn)


if __name__ == "__main__":
    main()
