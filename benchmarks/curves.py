"""Several runs' learning curves (valid NDCG@10 against wall-clock minutes) on one pair of axes.

    python benchmarks/curves.py --out=docs/img/recipe_curves.png \\
        "recipe=saved/<run id>.curve.csv" "release settings=docs/curves/instruments_release.csv"

Each argument is ``label=path`` to a ``.curve.csv`` file, as every saved run writes beside its checkpoint
(``recbole_letter.learning_curve``). Prints each curve's last and best point. No two curves look alike (ten
colours, then another line style and marker per further ten); with more than one curve the legend goes under
the axes.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from recbole_letter.learning_curve import plot_curves, read_curve  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("curves", nargs="+", help="label=path/to/run.curve.csv")
    parser.add_argument("--out", required=True, help="the PNG to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    curves = []
    for spec in args.curves:
        label, sep, path = spec.partition("=")
        if not sep or not os.path.isfile(path):
            parser.error(f"{spec!r}: expected label=path to an existing .curve.csv file")
        curves.append((label, path))
        points = read_curve(path)
        best = max(points, key=lambda p: p[2])
        print(f"{label}: {len(points)} points; last {points[-1][2]:.4f} at {points[-1][1]:.0f} min "
              f"(epoch {points[-1][0] + 1}); best {best[2]:.4f} at {best[1]:.0f} min (epoch {best[0] + 1})")
    plot_curves(curves, args.out, title=args.title)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
