"""Where a generator's hits come from, per split and per target popularity (a script, not a test).

    python benchmarks/split_gap.py --checkpoint=saved/<run id>.pth [--threads=2]

For a LETTER_TIGER / TIGER checkpoint, decodes (beam search, the run's beam) three sets of users and
prints Recall@k / NDCG@k of each:

1. ``train``: each user's last row of the training split (the history before the user's last training
   item, which is the target): what the model fits on data it was trained on (no item excluded: under
   ``exclude_seen_items`` the target is a seen item);
2. ``valid`` and 3. ``test``: RecBole's valid and test splits, as the run evaluated them (seen items kept
   out of the beam when the run had ``exclude_seen_items``).

Then, per split, the users grouped by how often their target item is a target in the training split
(its training count), with each group's share of users and Recall@k, and the mean training count of
the targets and of the items the model puts in its top k. A model that recommends popular items only
hits the frequent targets; a split whose targets are rarer then scores lower (docs/results.md,
"CPU recipe").
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from seen_items import trained_model  # noqa: E402

COUNT_GROUPS = ((0, 0), (1, 2), (3, 5), (6, 10), (11, 25), (26, None))


def last_training_rows(dataset, batch_size):
    """Batches ``(item_seq, item_seq_len, target, None)`` of each user's last row of the training split."""
    inter = dataset.inter_feat
    users = inter[dataset.uid_field].numpy()
    # RecBole's sequential split lists a user's rows in time order: the last one's target is the user's
    # last training item (np.unique on the reversed users finds each user's first index there)
    last = np.unique(users[::-1], return_index=True)[1]
    rows = torch.from_numpy(np.sort(len(users) - 1 - last))
    item_seq = inter[dataset.iid_field + dataset.config["LIST_SUFFIX"]][rows]
    lengths = inter[dataset.config["ITEM_LIST_LENGTH_FIELD"]][rows]
    targets = inter[dataset.iid_field][rows]
    for start in range(0, len(rows), batch_size):
        part = slice(start, start + batch_size)
        yield item_seq[part], lengths[part], targets[part], None


def eval_rows(model, data):
    """Batches ``(item_seq, item_seq_len, target, excluded)`` of a RecBole full-sort evaluation loader;
    ``excluded`` is the seen-item mask the model decodes with under ``exclude_seen_items``, else ``None``."""
    for interaction, _, positive_u, positive_i in data:
        target = torch.zeros(len(interaction), dtype=torch.long)
        target[positive_u] = positive_i
        yield interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN], target, model.excluded_items(interaction)


def decode(model, batches, k):
    """Per user: ``(rank of the target in the top k or -1, the target, the top-k item ids)``."""
    ranks, targets, top = [], [], []
    with torch.no_grad():
        for item_seq, lengths, target, excluded in batches:
            ids = model.generate_items(item_seq, lengths, excluded=excluded)[0][:, :k]
            hit = ids == target[:, None]
            ranks.append(torch.where(hit.any(1), hit.int().argmax(1), -1))
            targets.append(target)
            top.append(ids)
    return torch.cat(ranks).numpy(), torch.cat(targets).numpy(), torch.cat(top).numpy()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint, config, (train_data, valid_data, test_data), model = trained_model(args.checkpoint)
    k = args.k
    if k > model.beam_size:
        raise SystemExit(f"--k={k}: the beam holds {model.beam_size} items")
    dataset = train_data.dataset
    counts = np.bincount(dataset.inter_feat[dataset.iid_field].numpy(), minlength=dataset.item_num)
    splits = {
        "train": last_training_rows(dataset, config["eval_batch_size"]),
        "valid": eval_rows(model, valid_data),
        "test": eval_rows(model, test_data),
    }
    print(f"checkpoint {args.checkpoint} (run {checkpoint['run_id']}), {config['dataset']}, beam {model.beam_size}")
    print(f"split    users   R@{k}    N@{k}   mean training count: targets, top-{k} items")
    in_groups, users = {}, {}
    for name, batches in splits.items():
        ranks, targets, top = decode(model, batches, k)
        hit = ranks >= 0
        ndcg = np.where(hit, 1.0 / np.log2(np.maximum(ranks, 0) + 2.0), 0.0)
        ranked = top[top > 0]  # 0: a beam left empty (fewer items than the beam could hold)
        count = counts[targets]
        print(f"{name:<6} {len(ranks):>7}  {hit.mean():.4f}  {ndcg.mean():.4f}  "
              f"{count.mean():.1f}, {counts[ranked].mean():.1f}")
        users[name] = len(ranks)
        in_groups[name] = [hit[(count >= low) & (count <= (np.inf if high is None else high))]
                           for low, high in COUNT_GROUPS]
    print(f"by the target's training count: share of users / R@{k}")
    print("count    " + "".join(f"{name:<18}" for name in in_groups))
    for index, (low, high) in enumerate(COUNT_GROUPS):
        label = f"{low}+" if high is None else (f"{low}" if low == high else f"{low}-{high}")
        cells = []
        for name, groups in in_groups.items():
            group = groups[index]
            rate = f"{group.mean():.4f}" if len(group) else "-"
            cells.append(f"{len(group) / users[name]:.3f} / {rate}".ljust(18))
        print(f"{label:<9}" + "".join(cells))


if __name__ == "__main__":
    main()
