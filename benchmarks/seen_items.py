"""How much of a generator's beam goes to items the user has already seen (a script, not a test).

    python benchmarks/seen_items.py --checkpoint=saved/<run id>.pth

For a LETTER_TIGER / TIGER checkpoint (e.g. the main job's on ml-100k), evaluates the test split three
ways and prints, for each: the share of the beam's items the user met in the training split or history,
and test Recall@10 / NDCG@10.

1. ``exclude_seen_items: False``: RecBole's rule for sequential models, seen items ranked like any other;
2. the same lists with the seen items dropped afterwards (what masking the scores alone gives);
3. ``exclude_seen_items: True``: seen items kept out of beam search (every beam on an item that can count).

docs/results.md ("Why the CPU-sized generators first stayed below Pop") has the figures.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from recbole_letter import quick_start  # noqa: E402
from recbole_letter.model.seen_items import SeenItems  # noqa: E402


def beam_figures(model, test_data, seen, exclude, k=10):
    """``(share of beam items seen, R@k, N@k with the lists as decoded, R@k, N@k with seen items dropped)``."""
    in_seen = total = 0
    recall = ndcg = recall_dropped = ndcg_dropped = 0.0
    users = 0
    for interaction, _, positive_u, positive_i in test_data:
        item_seq = interaction[model.ITEM_SEQ]
        mask = seen.mask(interaction[model.USER_ID], item_seq)
        ids, _ = model.generate_items(item_seq, interaction[model.ITEM_SEQ_LEN], excluded=mask if exclude else None)
        is_seen = mask.gather(1, ids)
        in_seen += int(is_seen.sum())
        total += ids.numel()
        target = torch.zeros(len(ids), dtype=torch.long)
        target[positive_u] = positive_i
        for row, row_seen, item in zip(ids, is_seen, target):
            for lists, add in ((row[:k], 0), (row[~row_seen][:k], 1)):
                hit = (lists == item).nonzero()
                if len(hit):
                    gain = 1.0 / float(torch.log2(hit[0, 0].float() + 2))
                    if add:
                        recall_dropped, ndcg_dropped = recall_dropped + 1, ndcg_dropped + gain
                    else:
                        recall, ndcg = recall + 1, ndcg + gain
        users += len(ids)
    return in_seen / total, recall / users, ndcg / users, recall_dropped / users, ndcg_dropped / users


def trained_model(path):
    """``(checkpoint, config, (train_data, valid_data, test_data), model in eval mode)`` of a generator's
    checkpoint, rebuilt as ``--checkpoint`` does: its stored config, its codes, no tokenizer run."""
    checkpoint = quick_start.load_checkpoint(path)
    config = quick_start.config_from_values(checkpoint["config"])
    config.final_config_dict.pop("local_rank", None)
    config["state"] = "WARNING"
    config._init_device()
    _, train_data, valid_data, test_data = quick_start.load_data(config)
    model_class = quick_start.get_model_class(config["model"])
    codes = model_class.codes_from_state_dict(checkpoint["state_dict"])
    model = quick_start.build_model(config, train_data.dataset, codes)
    model.load_state_dict(checkpoint["state_dict"])
    return checkpoint, config, (train_data, valid_data, test_data), model.eval()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    checkpoint, config, (train_data, _, test_data), model = trained_model(args.checkpoint)
    seen = SeenItems(train_data.dataset)
    with torch.no_grad():
        as_decoded = beam_figures(model, test_data, seen, exclude=False)
        excluded = beam_figures(model, test_data, seen, exclude=True)
    print(f"checkpoint {args.checkpoint} (run {checkpoint['run_id']}), {config['dataset']}, beam {model.beam_size}")
    print("evaluation                                   seen share of beam   test R@10   test N@10")
    print(f"seen items ranked (RecBole's sequential rule)            {as_decoded[0]:.3f}      {as_decoded[1]:.4f}      {as_decoded[2]:.4f}")
    print(f"the same lists, seen items dropped afterwards                -      {as_decoded[3]:.4f}      {as_decoded[4]:.4f}")
    print(f"exclude_seen_items (kept out of beam search)             {excluded[0]:.3f}      {excluded[1]:.4f}      {excluded[2]:.4f}")


if __name__ == "__main__":
    main()
