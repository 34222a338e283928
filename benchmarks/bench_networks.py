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

"""Time the networks' forward pass on CPU.

Usage::

    python benchmarks/bench_networks.py [--threads 2] [--tile 512] [--size 4096] [--repeat 5]
                                        [--kinds trail star hybrid] [--sizes compact large] [--full]
                                        [--line-filters '[[9, 8], [25, 16]]']

For every default architecture (`default_architecture`), prints the
parameters, the state-dict size, the GFLOP of one forward pass over a
256x256 tile and the seconds of a forward pass over one ``tile`` x
``tile`` tile with ``threads`` torch threads (median and minimum of the
repeats), both for the model as trained (``eval``) and as prepared by
`prepare_for_inference` (batch normalization folded into the
convolutions, channels-last weights; ``fast``). The per-detector seconds
extrapolate the ``fast`` time per tile (``--statistic``: the minimum by
default, the median on request) to the ``ceil(size / tile)**2`` tiles of a
``size`` x ``size`` detector; ``--full`` also times the compact trail
network over a whole detector, tile by tile; ``--line-filters`` adds a
row for each trail network with those fixed line filters
(`ResAttentionUNet` ``line_filters``). The last line is
``network_seconds_per_4k_detector_cpu: X`` for the compact trail network
(``fast``; measured over the whole detector with ``--full``).

The minimum is the better estimate on a machine shared with other work:
two torch threads competing with other processes for two cores can run
several times slower than on idle cores.
"""

import argparse
import math
import statistics
import time


def _time(model, x, repeat):
    import torch

    with torch.inference_mode():
        model(x)  # warm up (kernel selection)
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads.")
    parser.add_argument("--tile", type=int, default=512, help="Tile size (pixels).")
    parser.add_argument("--size", type=int, default=4096, help="Detector size (pixels).")
    parser.add_argument("--repeat", type=int, default=5, help="Timed repetitions per tile.")
    parser.add_argument("--kinds", nargs="+", default=["trail", "star", "hybrid"], help="Networks.")
    parser.add_argument("--sizes", nargs="+", default=["compact", "large"], help="Variants.")
    parser.add_argument("--full", action="store_true", help="Also time a whole detector (compact trail).")
    parser.add_argument(
        "--line-filters",
        default=None,
        help="JSON [[length, n_angles], ...]: also time the trail networks with them.",
    )
    parser.add_argument(
        "--statistic", choices=("min", "median"), default="min", help="Per-tile time extrapolated."
    )
    args = parser.parse_args()

    import json

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lsst.trail_detect.models.networks import (
        build_model,
        count_parameters,
        default_architecture,
        model_size_bytes,
        prepare_for_inference,
    )

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    n_tiles = math.ceil(args.size / args.tile) ** 2
    tile = torch.randn(1, 1, args.tile, args.tile)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, tile {args.tile}, "
        f"{n_tiles} tiles per {args.size}x{args.size} detector"
    )
    header = (
        f"{'network':<36} {'params':>9} {'MB':>6} {'GFLOP/256':>9} {'eval med s':>11} "
        f"{'fast med s':>11} {'fast min s':>10} {'s/detector':>10}"
    )
    print(header)
    print("-" * len(header))
    compact_trail = None
    lines = json.loads(args.line_filters) if args.line_filters else None
    variants = []
    for kind in args.kinds:
        for size in args.sizes:
            variants.append((kind, size, "", default_architecture(kind, size)))
            if kind == "trail" and lines:
                variants.append((kind, size, "+lines", default_architecture(kind, size, line_filters=lines)))
    for kind, size, extra, architecture in variants:
        model = build_model(architecture).eval()
        fast = prepare_for_inference(model)
        flops = FlopCounterMode(display=False)
        with torch.inference_mode(), flops:
            model(torch.randn(1, 1, 256, 256))
        eval_median, _ = _time(model, tile, args.repeat)
        fast_median, fast_min = _time(fast, tile, args.repeat)
        seconds = (fast_min if args.statistic == "min" else fast_median) * n_tiles
        print(
            f"{kind + '/' + size + extra + ' (' + architecture['name'] + ')':<36} "
            f"{count_parameters(model):>9d} {model_size_bytes(model) / 1e6:>6.2f} "
            f"{flops.get_total_flops() / 1e9:>9.2f} {eval_median:>11.3f} {fast_median:>11.3f} "
            f"{fast_min:>10.3f} {seconds:>10.1f}",
            flush=True,
        )
        if kind == "trail" and size == "compact" and not extra:
            compact_trail = (fast, fast_median * n_tiles, fast_min * n_tiles)
    if compact_trail is None:
        fast = prepare_for_inference(build_model(default_architecture("trail", "compact")))
        median, minimum = _time(fast, tile, args.repeat)
        compact_trail = (fast, median * n_tiles, minimum * n_tiles)
    fast, median, minimum = compact_trail
    print(
        f"compact trail, extrapolated from one tile: median {median:.1f} s, "
        f"minimum {minimum:.1f} s per detector"
    )
    seconds = minimum if args.statistic == "min" else median
    if args.full:
        image = torch.randn(1, 1, args.size, args.size)
        with torch.inference_mode():
            start = time.perf_counter()
            for y in range(0, args.size, args.tile):
                for x in range(0, args.size, args.tile):
                    fast(image[..., y : y + args.tile, x : x + args.tile])
            seconds = time.perf_counter() - start
        print(f"compact trail, whole detector tile by tile: {seconds:.1f} s")
    print(f"network_seconds_per_4k_detector_cpu: {seconds:.2f}")


if __name__ == "__main__":
    main()
