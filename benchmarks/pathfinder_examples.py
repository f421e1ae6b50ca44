"""A picture of generated Pathfinder examples, to look at.

    python -m benchmarks.pathfinder_examples [--resolution 32] [--seed 0] [--out DIR]

Writes ``pathfinder<r>_examples.png`` to DIR (default ``outputs/benchmarks``): 16 examples
(indices 0..15; odd indices are positives) with their labels, as the model sees them (grey
levels, markers included).
"""

import argparse
import pathlib

import matplotlib

from ssm.data.pathfinder import RECIPES, pathfinder_example

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=32, choices=sorted(RECIPES))
    parser.add_argument("--contour-length", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("outputs/benchmarks"))
    args = parser.parse_args()
    fig, axes = plt.subplots(4, 4, figsize=(9, 9.6))
    for index, ax in enumerate(axes.flat):
        image, label = pathfinder_example(args.resolution, args.contour_length, index, args.seed)
        ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(f"#{index}: {'connected' if label else 'not connected'} ({label})", fontsize=9)
        ax.axis("off")
    fig.suptitle(
        f"Pathfinder-{args.resolution}, contour length {args.contour_length}, seed {args.seed}"
    )
    fig.tight_layout()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"pathfinder{args.resolution}_examples.png"
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
