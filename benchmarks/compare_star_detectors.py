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

"""Compare star detectors (e.g. CenterNet against the hybrid transformer) on held-out star fields.

Usage::

    python benchmarks/compare_star_detectors.py REPO --collections STARS MODEL_A MODEL_B ... [--split test]

Runs `EvaluateStarDetectorTask` (held-out split of the star fields, the
classical 5 sigma detection beside each network) for every model file and
prints, per model, the completeness at SNR 5 and 6.5 and the purity above
SNR 10 (all fields and crowded ones), and the network's seconds per field.
"""

import argparse
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("repo", help="Butler repository with star_field_image and star_field_truth.")
    parser.add_argument("models", nargs="+", help="Star model files (.safetensors).")
    parser.add_argument("--collections", required=True, help="Collection(s) of the star fields.")
    parser.add_argument("--split", default="test", help="Split of the star fields to use.")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads.")
    args = parser.parse_args()

    import torch

    from lsst.daf.butler import Butler
    from lsst.trail_detect.evaluation.evaluate_stars import (
        EvaluateStarDetectorConfig,
        EvaluateStarDetectorTask,
    )
    from lsst.trail_detect.models.storage import TrailDetectorModel

    torch.set_num_threads(args.threads)
    butler = Butler.from_config(args.repo, collections=args.collections.split(","))

    def refs(name):
        return sorted(
            butler.query_datasets(name, limit=None), key=lambda r: (r.dataId["visit"], r.dataId["detector"])
        )

    images, truths = refs("star_field_image"), refs("star_field_truth")
    for path in args.models:
        model = TrailDetectorModel.load(path)
        config = EvaluateStarDetectorConfig()
        config.split = args.split
        config.threads = args.threads
        config.device = "cpu"
        task = EvaluateStarDetectorTask(config=config)
        t0 = time.perf_counter()
        metrics = task.run(
            images=[butler.getDeferred(r) for r in images],
            truths=[butler.getDeferred(r) for r in truths],
            model=model,
        ).metrics
        seconds = time.perf_counter() - t0
        n_fields = len(metrics.get("fields", []))
        print(f"{path}: {model.summary()}")
        print(
            f"  {n_fields} {args.split} fields, {seconds:.1f} s in all "
            f"({seconds / max(n_fields, 1):.1f} s per field)"
        )
        for goal in metrics["goals"]:
            measured = goal.get("measured")
            classical = goal.get("classical")
            print(
                f"  [{'met' if goal['met'] else 'NOT met'}] {goal['goal']} ({goal.get('sample', 'all')}): "
                f"CNN {np.nan if measured is None else measured:.3f}, classical "
                f"{np.nan if classical is None else classical:.3f}"
            )


if __name__ == "__main__":
    main()
