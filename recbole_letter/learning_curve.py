"""A run's learning curve: the validation metric against wall-clock minutes since training began.

The trainer adds a point after every validation and rewrites ``<run id>.curve.csv`` at once (atomically,
so a crash keeps every point so far); ``plot_curves`` draws one or several such files on shared axes.
"""

import csv

from recbole_letter.files import atomic_open, write_atomic

COLUMNS = ("epoch", "minutes", "valid_score")


class LearningCurve:
    """Points ``(epoch, minutes, valid_score, {metric: value})`` of one run, written to ``path`` (CSV)."""

    def __init__(self, path, points=()):
        self.path = path
        self.points = [tuple(p) for p in points]

    def add(self, epoch, minutes, valid_score, valid_result):
        self.points.append((epoch, minutes, float(valid_score), {k: float(v) for k, v in valid_result.items()}))
        self.write()

    def write(self):
        metrics = sorted({k for *_, result in self.points for k in result})
        with atomic_open(self.path) as f:
            out = csv.writer(f)
            out.writerow([*COLUMNS, *metrics])
            for epoch, minutes, score, result in self.points:
                out.writerow([epoch, f"{minutes:.3f}", f"{score:.6f}", *(f"{result.get(k, float('nan')):.6f}" for k in metrics)])

    def state(self):
        """Plain values for a ``-last.pth`` checkpoint: a resumed run continues the same curve."""
        return [[epoch, minutes, score, result] for epoch, minutes, score, result in self.points]


def read_curve(path):
    """``[(epoch, minutes, valid_score), ...]`` from a ``.curve.csv`` file."""
    with open(path, newline="", encoding="utf-8") as f:
        return [(int(row["epoch"]), float(row["minutes"]), float(row["valid_score"])) for row in csv.DictReader(f)]


_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
           "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D")]


def line_style(i):
    """Colour, line style and marker of the ``i``-th curve: matplotlib's ten colours, then each further ten
    curves with another line style and marker, so that 40 curves on one figure all look different."""
    linestyle, marker = _STYLES[(i // len(_COLORS)) % len(_STYLES)]
    return {"color": _COLORS[i % len(_COLORS)], "linestyle": linestyle, "marker": marker}


def plot_curves(curves, path, metric="valid NDCG@10", title=None):
    """One line per ``(label, csv path)`` in ``curves``: the validation metric against wall-clock minutes,
    written as a PNG to ``path``.

    Args:
        curves: ``[(label, csv_path), ...]``, each a file written by :class:`LearningCurve`.
        path: the PNG to write (atomically).
        metric: the y-axis label.
        title: the figure's title, or ``None``.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Several (long) labels go under the axes, one per row, instead of over the lines.
    below = len(curves) > 1
    fig, ax = plt.subplots(figsize=(7, 4.2 + (0.19 * len(curves) if below else 0)))
    for i, (label, csv_path) in enumerate(curves):
        points = read_curve(csv_path)
        ax.plot([p[1] for p in points], [p[2] for p in points], markersize=3, label=label, **line_style(i))
    ax.set_xlabel("wall-clock minutes since training began")
    ax.set_ylabel(metric)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if below:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0, -0.14), frameon=False)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight"), suffix=".png")
    plt.close(fig)
    return path
