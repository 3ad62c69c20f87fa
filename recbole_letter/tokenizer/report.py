"""Quality report of item codes: JSON + printed table + PNG plots.

Figures (paper Sec. 3.1 and Sec. 4): collision rate before / after resolution, codes used and entropy per
level, the level-1 code-assignment histogram grouped as in paper Fig. 6 (codes sorted by frequency,
groups of 15), and the two CF checks of paper Tables 3-4:

* ``zhat_ranking`` (Table 3): the trained SASRec ranks items with its own item table and again with
  ``z_hat`` in its place (Recall/NDCG@5,10). On ``eval_data`` when given, else on each user's last
  *training* target (the only targets the tokenizer hook may see). Tied scores count at their expected
  rank (``expected_hits``): a constant table scores chance, not a perfect 1.0.
* ``cf_neighbour_code_overlap`` (Table 4): each item is paired with its nearest other item by cosine
  similarity of the CF table; the score is the fraction of code positions (first ``num_levels``
  levels, before disambiguation) where the two codes agree, averaged over items.

Released codes (``*.index.json``) get the same report: ``--tokenize_only=True --item_codes_file=<file>``
(``tokenizer.trainer.report_for_index_json``).
"""

import os

import numpy as np
import torch

from recbole_letter.files import write_atomic
from recbole_letter.tokenizer.cache import save_json

FIG6_GROUP_SIZE = 15


def entropy_bits(codes_at_level):
    counts = np.bincount(codes_at_level)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def level1_groups(codes_at_level, group_size=FIG6_GROUP_SIZE):
    """Items per group of ``group_size`` first-level codes, codes sorted by frequency (paper Fig. 6)."""
    counts = np.sort(np.bincount(codes_at_level))[::-1]
    counts = counts[counts > 0]
    return [int(counts[i : i + group_size].sum()) for i in range(0, len(counts), group_size)]


def cf_neighbour_code_overlap(codes, cf_emb, chunk=2048):
    """Table 4: mean fraction of equal code positions between each item and its CF-nearest item."""
    table = torch.from_numpy(np.asarray(cf_emb[1:], dtype=np.float32))
    table = table / table.norm(dim=1, keepdim=True).clamp(min=1e-12)
    neighbours = []
    for start in range(0, len(table), chunk):
        sims = table[start : start + chunk] @ table.T  # [c, n]
        sims[torch.arange(len(sims)), torch.arange(start, start + len(sims))] = -float("inf")
        neighbours.append(sims.argmax(dim=1))
    neighbour = torch.cat(neighbours).numpy()
    real = codes[1:]
    same = real == real[neighbour]
    prefix = np.cumprod(same, axis=1).sum(axis=1)
    return float(same.mean()), float(prefix.mean() / real.shape[1])


def expected_hits(scores, target, k):
    """Recall@k and NDCG@k per row, expected under a random order of tied scores.

    ``scores`` ``[B, n_items]`` (padding column at ``-inf``), ``target`` ``[B]``. With ``g`` items scored
    above the target and ``t`` items tied with it (itself included), its rank is uniform on
    ``g .. g + t - 1``: recall = the share of those ranks below ``k``, NDCG = their mean discount. Counting
    ties as hits would give a constant table a perfect 1.0; this gives it chance, ``k / n_real_items``.
    A NaN score never helps: a NaN target is a miss, and other items' NaN scores count as above the target.
    """
    target_score = scores.gather(1, target.view(-1, 1))  # [B, 1]
    above = ((scores > target_score) | scores.isnan()).sum(1)  # g, [B]
    tied = (scores == target_score).sum(1).clamp(min=1)  # t, [B] (0 only for a NaN target, a miss below)
    discount = 1.0 / torch.log2(torch.arange(k, dtype=torch.float64) + 2)  # rank r -> 1 / log2(r + 2), r < k
    cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), discount.cumsum(0)])  # [k + 1]
    low, high = above.clamp(max=k), (above + tied).clamp(max=k)  # the ranks g .. g+t-1 that fall below k
    nan_target = target_score.view(-1).isnan()
    recall = torch.where(nan_target, 0.0, (high - low).double() / tied)
    ndcg = torch.where(nan_target, 0.0, (cumulative[high] - cumulative[low]) / tied)
    return recall, ndcg


@torch.no_grad()
def _rank_targets(model, tables, batches):
    """Recall/NDCG@5,10 per table for (item_seq, item_seq_len, target) batches (ties: ``expected_hits``)."""
    ks, sums, n = (5, 10), {name: {} for name in tables}, 0
    for item_seq, item_seq_len, target in batches:
        seq_out = model.forward(item_seq, item_seq_len)  # [B, H]
        n += len(target)
        for name, table in tables.items():
            scores = seq_out @ table.T  # [B, n_items]
            scores[:, 0] = -float("inf")
            for k in ks:
                recall, ndcg = expected_hits(scores, target, k)
                sums[name][f"recall@{k}"] = sums[name].get(f"recall@{k}", 0.0) + recall.sum().item()
                sums[name][f"ndcg@{k}"] = sums[name].get(f"ndcg@{k}", 0.0) + ndcg.sum().item()
    return {name: {m: v / max(n, 1) for m, v in metrics.items()} for name, metrics in sums.items()}


def zhat_ranking(cf_model, cf_emb, z_hat, dataset, eval_data=None, batch_size=2048):
    """Table 3: SASRec ranking with its item table vs with ``z_hat`` in its place."""
    if cf_model is None or z_hat is None:
        return None
    if z_hat.shape[1] != cf_emb.shape[1]:
        return {"skipped": f"z_hat dim {z_hat.shape[1]} != CF dim {cf_emb.shape[1]}"}
    tables = {"sasrec_items": torch.from_numpy(cf_emb), "z_hat": torch.from_numpy(z_hat)}
    seq_field, len_field, iid = cf_model.ITEM_SEQ, cf_model.ITEM_SEQ_LEN, dataset.iid_field
    if eval_data is not None:
        batches = ((b[0][seq_field], b[0][len_field], b[0][iid]) for b in eval_data)
        split = "eval_data"
    else:  # each user's last training target
        inter = dataset.inter_feat
        users, lengths = inter[dataset.uid_field].numpy(), inter[len_field].numpy()
        order = np.lexsort((lengths, users))
        last = order[np.r_[users[order][1:] != users[order][:-1], True]]
        seq, seq_len, target = inter[seq_field][last], inter[len_field][last], inter[iid][last]
        batches = ((seq[i : i + batch_size], seq_len[i : i + batch_size], target[i : i + batch_size])
                   for i in range(0, len(last), batch_size))  # fmt: skip
        split = "last training target per user"
    result = _rank_targets(cf_model.eval(), tables, batches)
    result["split"] = split
    return result


def build_report(dataset, before, resolved, final, cf_emb=None, z_hat=None, cf_model=None, eval_data=None, title=""):
    """The report dict (JSON-ready). ``before``/``resolved``/``final`` are ``ItemCodes``."""
    real = before.codes[1:]
    report = {
        "title": title,
        "n_items": int(len(real)),
        "num_levels": int(before.n_levels),
        "codebook_sizes": before.codebook_sizes,
        "collision_rate_before": before.collision_rate(),
        "collision_rate_after_sinkhorn": resolved.collision_rate(),
        "collision_rate_after": final.collision_rate(),
        "colliding_items_before": int(sum(len(g) for g in before.collision_groups())),
        "duplicate_codes_after_sinkhorn": int(len(real) - len(np.unique(resolved.codes[1:], axis=0))),
        "final_num_levels": int(final.n_levels),
        "disambiguation_level_added": bool(final.n_levels > before.n_levels),
        "codes_used_per_level": [int(len(np.unique(real[:, lvl]))) for lvl in range(real.shape[1])],
        "entropy_per_level": [entropy_bits(real[:, lvl]) for lvl in range(real.shape[1])],
        "max_entropy_per_level": [float(np.log2(s)) for s in before.codebook_sizes],
        "level1_group_counts": level1_groups(real[:, 0]),
        "level1_code_counts": np.bincount(real[:, 0], minlength=before.codebook_sizes[0]).tolist(),
    }
    if cf_emb is not None:
        overlap, prefix = cf_neighbour_code_overlap(resolved.codes, cf_emb)
        report["cf_neighbour_code_overlap"] = overlap
        report["cf_neighbour_prefix_overlap"] = prefix
    report["zhat_ranking"] = zhat_ranking(cf_model, cf_emb, z_hat, dataset, eval_data) if cf_emb is not None else None
    return report


def format_table(report):
    """The printed summary (one metric per line)."""
    fmt_list = lambda xs, f="{}": "/".join(f.format(x) for x in xs)  # noqa: E731
    rows = [
        ("items", report["n_items"]),
        ("levels x codebook", f"{report['num_levels']} x {fmt_list(report['codebook_sizes'])}"),
        ("collision rate before", f"{report['collision_rate_before']:.4%}"),
        ("collision rate after Sinkhorn", f"{report['collision_rate_after_sinkhorn']:.4%}"),
        ("collision rate final", f"{report['collision_rate_after']:.4%} ({report['final_num_levels']} levels)"),
        ("codes used per level", fmt_list(report["codes_used_per_level"])),
        ("entropy per level (bits)", fmt_list(report["entropy_per_level"], "{:.2f}")),
        ("level-1 items per 15 codes", fmt_list(report["level1_group_counts"][:8]) + (" ..." if len(report["level1_group_counts"]) > 8 else "")),
    ]
    if "cf_neighbour_code_overlap" in report:
        rows.append(("CF-neighbour code overlap", f"{report['cf_neighbour_code_overlap']:.4f}"))
    ranking = report.get("zhat_ranking")
    if ranking and "z_hat" in ranking:
        for name in ("sasrec_items", "z_hat"):
            m = ranking[name]
            rows.append((f"SASRec w/ {name} R@10/N@10", f"{m['recall@10']:.4f} / {m['ndcg@10']:.4f}"))
    width = max(len(r[0]) for r in rows)
    title = report.get("title") or "item codes"
    return "\n".join([f"== tokenizer report: {title} =="] + [f"{k.ljust(width)}  {v}" for k, v in rows])


def write_plots(report, out_dir):
    """PNG plots next to the JSON; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].bar(["before", "after Sinkhorn", "final"],
                [report["collision_rate_before"], report["collision_rate_after_sinkhorn"], report["collision_rate_after"]])  # fmt: skip
    axes[0].set_title("collision rate")
    levels = np.arange(1, report["num_levels"] + 1)
    axes[1].bar(levels, report["codes_used_per_level"])
    axes[1].set_title("codes used per level")
    axes[1].set_xlabel("level")
    axes[2].bar(levels, report["entropy_per_level"], label="entropy")
    axes[2].plot(levels, report["max_entropy_per_level"], "k--", label="log2 N")
    axes[2].set_title("entropy per level (bits)")
    axes[2].legend()
    fig.tight_layout()
    paths["summary_png"] = os.path.join(out_dir, "report_summary.png")
    write_atomic(paths["summary_png"], lambda tmp: fig.savefig(tmp, dpi=90))  # a crash leaves the old figure
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    groups = report["level1_group_counts"]
    ax.bar(np.arange(1, len(groups) + 1), groups)
    ax.set_xlabel(f"first-level code group ({FIG6_GROUP_SIZE} codes each, by frequency)")
    ax.set_ylabel("items")
    ax.set_title(f"level-1 code assignment ({report['codes_used_per_level'][0]} codes used)")
    fig.tight_layout()
    paths["level1_png"] = os.path.join(out_dir, "report_level1_histogram.png")
    write_atomic(paths["level1_png"], lambda tmp: fig.savefig(tmp, dpi=90))
    plt.close(fig)
    return paths


def tokenizer_report(dataset, before, resolved, final, cf_emb=None, z_hat=None, cf_model=None, eval_data=None,
                     out_dir=".", title="", extra=None, plots=True, quiet=False):  # fmt: skip
    """Build, save (``<out_dir>/report.json`` + PNGs) and print the report; returns the dict."""
    report = build_report(dataset, before, resolved, final, cf_emb, z_hat, cf_model, eval_data, title)
    report.update(extra or {})
    os.makedirs(out_dir, exist_ok=True)
    if plots:
        report["plots"] = write_plots(report, out_dir)
    report["report_json"] = os.path.join(out_dir, "report.json")
    save_json(report["report_json"], report)
    if not quiet:
        print(format_table(report))
        print(f"report JSON: {report['report_json']}")
    return report
