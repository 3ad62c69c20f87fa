"""Decoding throughput: our trie-constrained beam search vs transformers' generate (the release's way).

    python benchmarks/decoding.py --dataset=Beauty            # codes: <data_path>/Beauty/raw/Beauty.index.json
    python benchmarks/decoding.py --dataset=ml-100k           # random unique codes (4 x 256)

Same LETTER_TIGER weights (release architecture, random init unless --checkpoint), beam 20, top-20 lists, and
the same users in the same order for both sides: --users test users of RecBole's leave-one-out split, spread evenly
over it (``--pool=spread``, the default) or its first ones (``--pool=first``).

* ours: ``GenerativeRecommender.generate_items`` (``constrained_beam_search`` + ``T5BeamDecoder``), which
  sorts and chunks the users it is given as it does in a real evaluation, and decodes the chunks in
  ``decode_workers`` threads (``--decode_workers``; the model's default on a CPU: the largest divisor of torch's
  thread count up to 4);
* release: ``T5ForConditionalGeneration.generate(num_beams=20, num_return_sequences=20,
  prefix_allowed_tokens_fn=...)`` over a Python dict trie ``prefix tuple -> allowed tokens``, timed at
  each ``--release_batch`` size (users per call); the speedup is against the fastest.

The users are decoded in --rounds parts (default 1: all at once); each part is decoded by generate at every
batch size and by ours before each of those (ours' time: the mean of these passes), so that load from other
processes hits all sides alike. Prints both throughputs (users/s, each round's too), the agreement of the
lists with generate's at every batch size (identical, or differing only where the two scores tie within
--tie_tol), the multiply-adds per user of both on the calls timed (``FlopCounterMode``: matmuls and batched
matmuls, MACs = FLOPs / 2), this CPU's float32 matmul peak at the benchmark's thread count (the best of a few
large ``torch.mm``), the share of it each side reaches, the arithmetic limit (peak / our MACs per user) and
what 10x generate needs against it, and, as the last line, ``speedup: <ratio>``.
``--full_eval`` also times one full RecBole test evaluation (every test user) with our decoding, in
``--full_eval_nproc`` processes (default 1; DDP, each with its share of the users); ``--amp``
also times ours under autocast (``enable_amp``, in ``amp_dtype``: bfloat16 by default) against float32,
interleaved, and how many of the float32 top-10 items it keeps.
"""

import argparse
import json
import os
import random
import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import recbole_letter  # noqa: E402,F401
from recbole_letter.benchmark import scratch_dir  # noqa: E402
from recbole_letter.quick_start import build_trainer, data_fingerprint, evaluate_checkpoint, prepare  # noqa: E402


def random_index(dataset_path, name, out, levels=4, size=256, seed=0):
    """Random unique codes for every item of ``<dataset_path>/<name>/<name>.inter`` (LETTER json)."""
    with open(os.path.join(dataset_path, name, f"{name}.inter")) as f:
        header = f.readline().rstrip("\n").split("\t")
        column = [i for i, h in enumerate(header) if h.startswith("item_id")][0]
        items = sorted({line.rstrip("\n").split("\t")[column] for line in f})
    rng = random.Random(seed)
    codes = set()
    index = {}
    for item in items:
        code = tuple(rng.randrange(size) for _ in range(levels))
        while code in codes:
            code = tuple(rng.randrange(size) for _ in range(levels))
        codes.add(code)
        index[item] = [f"<{'abcdefgh'[level]}_{c}>" for level, c in enumerate(code)]
    with open(out, "w") as f:
        json.dump(index, f)
    return out


def test_histories(model, test_data, n_users, pool="spread"):
    """The histories ``(item_seq, item_seq_len)`` of ``n_users`` test users, in the test split's order: the first
    ``n_users`` (``pool="first"``), or ``n_users`` spread evenly over the whole split (``"spread"``), whose history
    lengths are those of a full test evaluation (Beauty: the first 256 users average 9.6 items, all 7.2)."""
    if pool not in ("first", "spread"):
        raise ValueError(f"pool must be 'first' or 'spread', not {pool!r}")
    seqs, lens = [], []
    for batch in test_data:
        seqs.append(batch[0][model.ITEM_SEQ])
        lens.append(batch[0][model.ITEM_SEQ_LEN])
        if pool == "first" and sum(len(s) for s in seqs) >= n_users:
            break
    seqs, lens = torch.cat(seqs), torch.cat(lens)
    if pool == "first" or n_users >= len(seqs):
        return seqs[:n_users], lens[:n_users]
    rows = torch.linspace(0, len(seqs) - 1, n_users, dtype=torch.float64).round().long()  # distinct: n_users < len
    return seqs[rows], lens[rows]


def release_generate(model, item_seq, item_seq_len, beam, batch_size):
    """transformers generate + prefix_allowed_tokens_fn over a dict trie (the LETTER release's method)."""
    allowed = {}
    for seq in model.item_code_tokens[1:].tolist():
        for t in range(len(seq)):
            allowed.setdefault((model.pad_token_id, *seq[:t]), []).append(seq[t])
    allowed = {prefix: sorted(set(tokens)) for prefix, tokens in allowed.items()}
    sequence_to_item = {tuple(seq): item for item, seq in enumerate(model.item_code_tokens.tolist()) if item}

    def prefix_allowed_tokens(batch_id, sentence):
        return allowed.get(tuple(sentence.tolist()), [])

    items, scores = [], []
    for start in range(0, len(item_seq), batch_size):
        tokens, mask = model._trim(*model.history_code_tokens(item_seq[start : start + batch_size]))
        out = model.t5.generate(input_ids=tokens, attention_mask=mask.long(), num_beams=beam,
                                num_return_sequences=beam, max_new_tokens=model.code_len, do_sample=False,
                                length_penalty=0.0, early_stopping=True, output_scores=True,
                                return_dict_in_generate=True, prefix_allowed_tokens_fn=prefix_allowed_tokens)
        rows = [sequence_to_item.get(tuple(seq[1:]), 0) for seq in out.sequences.tolist()]
        items.append(torch.tensor(rows).view(-1, beam))
        scores.append(out.sequences_scores.view(-1, beam))
    return torch.cat(items), torch.cat(scores)


def agreement(ours, our_scores, theirs, their_scores, tie_tol):
    """Share of identical lists, and of lists whose differences are all within-tie reorderings."""
    identical = tie_only = 0
    for a, sa, b, sb in zip(ours.tolist(), our_scores.tolist(), theirs.tolist(), their_scores.tolist()):
        if a == b:
            identical += 1
            continue
        # differing only in exact ties: same multiset of scores (within tol) and every item's score
        # equal in both; the last slot may swap an item for another of equal score
        sa, sb = np.array(sa), np.array(sb)
        same_scores = np.allclose(sa, sb, atol=tie_tol, rtol=0)
        ours_pos, their_pos = {i: s for i, s in zip(a, sa)}, {i: s for i, s in zip(b, sb)}
        consistent = all(abs(ours_pos[i] - their_pos[i]) <= tie_tol for i in set(a) & set(b))
        if same_scores and consistent:
            tie_only += 1
    return identical, tie_only


def round_rates(chunks, seconds):
    """Users/s of each timing round, to show how much the machine's load moved them."""
    return ", ".join(f"{len(rows) / s:.1f}" for rows, s in zip(chunks, seconds))


def compare_autocast(model, item_seq, item_seq_len, chunks, float_ids, device):
    """Ours under autocast vs float32, interleaved per chunk; top-10 overlap with the float32 lists."""
    seconds = {False: 0.0, True: 0.0}
    amp_ids = []
    with torch.no_grad():
        for rows in chunks:
            rows = torch.from_numpy(rows)
            for amp in (True, False):
                model.enable_amp = amp
                start = time.perf_counter()
                ids, _ = model.generate_items(item_seq[rows], item_seq_len[rows])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                seconds[amp] += time.perf_counter() - start
                if amp:
                    amp_ids.append(ids)
    model.enable_amp = False
    amp_ids = torch.cat(amp_ids)
    kept = [len(set(a[:10].tolist()) & set(b[:10].tolist())) / 10 for a, b in zip(amp_ids, float_ids)]
    print(f"ours, autocast: {len(item_seq) / seconds[True]:.1f} users/s vs float32 {len(item_seq) / seconds[False]:.1f} "
          f"({seconds[False] / seconds[True]:.2f}x); keeps {100 * np.mean(kept):.1f}% of the float32 top-10 items, "
          f"{np.mean(np.equal(kept, 1.0)) * 100:.1f}% of users keep all 10")


def macs_per_user(decode, n_users):
    """Multiply-adds per user of ``decode()`` (matmuls and batched matmuls, as ``FlopCounterMode`` counts them)."""
    with FlopCounterMode(display=False) as counter:
        decode()
    return counter.get_total_flops() / 2 / n_users


# large float32 products (rows, inner, columns): the best rate of any is taken as this CPU's peak
PEAK_SHAPES = [(2048, 2048, 2048), (4096, 1024, 1024), (1280, 1024, 1024)]


def matmul_peak(device, repeats=5):
    """This device's float32 matmul peak, multiply-adds per second: the best of ``repeats`` timings of
    ``torch.mm`` at each of ``PEAK_SHAPES`` (at the current torch thread count)."""
    best = 0.0
    for rows, inner, columns in PEAK_SHAPES:
        a, b = torch.randn(rows, inner, device=device), torch.randn(inner, columns, device=device)
        out = torch.empty(rows, columns, device=device)
        for i in range(repeats + 1):  # the first call is a warm-up
            start = time.perf_counter()
            torch.mm(a, b, out=out)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i:
                best = max(best, rows * inner * columns / (time.perf_counter() - start))
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="Beauty")
    parser.add_argument("--data_path", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
    parser.add_argument("--codes", default=None, help="*.index.json (default: <data_path>/<dataset>/raw/<dataset>.index.json, else random)")
    parser.add_argument("--beam", type=int, default=20)
    parser.add_argument("--users", type=int, default=256, help="test users decoded by both sides, in the same order")
    parser.add_argument("--pool", default="spread", choices=["spread", "first"], help="which test users: spread evenly "
                        "over the test split (its history lengths) or its first --users (before 2026-12-07 the only pool)")
    parser.add_argument("--batch", type=int, default=0, help="users per beam batch, ours (0 = the model's beam_batch_size)")
    parser.add_argument("--decode_workers", type=int, default=0, help="threads ours decodes its chunks in (0 = the "
                        "model's decode_workers: ~, on a CPU the largest divisor of torch's thread count up to 4)")
    parser.add_argument("--release_batch", default="1,2,4,8,16,32,64", help="users per generate call (comma list: each is timed; the speedup is against the fastest)")
    parser.add_argument("--checkpoint", default=None, help="trained LETTER_TIGER checkpoint (default: random init)")
    parser.add_argument("--rounds", type=int, default=1, help="parts the users are decoded in (ours gets each part in one "
                        "generate_items call; its passes alternate with generate's in every part)")
    parser.add_argument("--tie_tol", type=float, default=1e-4)
    parser.add_argument("--full_eval", action="store_true", help="also time one full test evaluation")
    parser.add_argument("--full_eval_nproc", type=int, default=1, help="processes for --full_eval (DDP, as "
                        "run_recbole_letter.py --checkpoint=... --nproc=N), each with threads / N threads")
    parser.add_argument("--threads", type=int, default=0, help="torch threads for both sides (0 = torch default)")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--amp", action="store_true", help="also time ours under autocast (enable_amp)")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    data_path = os.path.abspath(args.data_path)  # paths given relative to where the command runs
    codes = os.path.abspath(args.codes or os.path.join(data_path, args.dataset, "raw", f"{args.dataset}.index.json"))
    checkpoint = args.checkpoint and os.path.abspath(args.checkpoint)
    work = scratch_dir("decoding_bench_")
    config_dict = {"show_progress": False, "state": "WARNING", "beam_size": args.beam, "checkpoint_dir": os.path.join(work, "saved"), "seed": args.seed}
    if args.batch:
        config_dict["beam_batch_size"] = args.batch
    if args.decode_workers:
        config_dict["decode_workers"] = args.decode_workers
    if args.dataset != "ml-100k":
        config_dict["data_path"] = data_path
    if not os.path.isfile(codes):
        from recbole.config import Config  # noqa: F401

        import recbole

        embedded = os.path.join(os.path.dirname(recbole.__file__), "dataset_example")
        codes = random_index(data_path if args.dataset != "ml-100k" else embedded, args.dataset,
                             os.path.join(work, "random.index.json"))
        print(f"codes: random unique 4 x 256 ({codes})")
        config_dict["codebook_size"] = 256  # the codes' own (a dataset's profile may set a smaller one)
    else:
        print(f"codes: {codes}")
    config_dict["item_codes_file"] = codes

    t0 = time.perf_counter()
    config, full_dataset, train_data, _, test_data = prepare("LETTER_TIGER", args.dataset, config_dict=config_dict)
    from recbole_letter.model.letter_tiger import LETTER_TIGER

    device = config["device"]  # a GPU where RecBole finds one
    model = LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset)).to(device)
    if checkpoint:
        from recbole_letter.trainer import load_checkpoint

        model.load_state_dict(load_checkpoint(checkpoint, device)["state_dict"])
    model.eval()
    print(f"data + model: {time.perf_counter() - t0:.1f} s on {device}; items {model.n_items - 1}, tokens/item {model.code_len}, "
          f"vocab {model.vocab_size}, torch threads {torch.get_num_threads()}")
    n_users = args.users
    item_seq, item_seq_len = (t.to(device) for t in test_histories(model, test_data, n_users, args.pool))
    n_users = len(item_seq)
    print(f"users: {n_users} ({args.pool} pool), mean history {item_seq_len.float().mean().item():.2f} items")

    def ours(rows):
        return model.generate_items(item_seq[rows], item_seq_len[rows])

    def release(rows, batch):
        return release_generate(model, item_seq[rows], item_seq_len[rows], args.beam, batch)

    # interleaved rounds: each part of the users is decoded by generate at each batch size, and by ours
    # before each of those (its time the sum, its rate over as many passes), so that load from other
    # processes on a shared machine hits every side alike
    release_batches = [int(b) for b in str(args.release_batch).split(",")]
    chunks = [torch.from_numpy(rows) for rows in np.array_split(np.arange(n_users), max(1, min(args.rounds, n_users)))]
    outputs = {side: [] for side in ["ours", *release_batches]}  # per round: (item ids, scores)
    seconds = {side: [] for side in outputs}

    def timed(decode):
        start = time.perf_counter()
        result = decode()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return result, time.perf_counter() - start

    peaks = []  # the matmul peak, measured in every round too: the best of them is this CPU's
    with torch.no_grad():
        ours(chunks[0][:8])  # warm-up
        release(chunks[0][:2], 2)
        for rows in chunks:
            peaks.append(matmul_peak(device))
            our_seconds = 0.0
            for batch in release_batches:
                result, spent = timed(lambda: ours(rows))
                our_seconds += spent
                if batch == release_batches[0]:
                    outputs["ours"].append(result)
                elif not torch.equal(result[0], outputs["ours"][-1][0]):
                    raise RuntimeError("ours decoded other lists for the same users in another pass")
                result, spent = timed(lambda: release(rows, batch))
                outputs[batch].append(result)
                seconds[batch].append(spent)
            seconds["ours"].append(our_seconds / len(release_batches))  # one pass' worth
    lists = {side: (torch.cat([ids for ids, _ in out]), torch.cat([s for _, s in out])) for side, out in outputs.items()}
    rates = {side: n_users / sum(s) for side, s in seconds.items()}
    best_batch = max(release_batches, key=lambda batch: rates[batch])
    print(f"ours:    {n_users} users in {sum(seconds['ours']):.2f} s = {rates['ours']:.1f} users/s "
          f"(<= {model.beam_batch_size} users per beam batch, up to {model.decode_workers_on(device)} decoding thread(s); mean of {len(release_batches)} passes, one before each "
          f"generate batch size; rounds: {round_rates(chunks, seconds['ours'])})")
    our_ids, our_scores = lists["ours"]
    for batch in release_batches:
        identical, tie_only = agreement(our_ids, our_scores, *lists[batch], args.tie_tol)
        max_diff = (our_scores - lists[batch][1]).abs().max().item()
        print(f"release: {n_users} users in {sum(seconds[batch]):.2f} s = {rates[batch]:.1f} users/s "
              f"(generate, <= {batch} users per call; rounds: {round_rates(chunks, seconds[batch])}); "
              f"top-{args.beam} lists vs ours: {identical}/{n_users} identical, {tie_only} differ only in ties, "
              f"max |score diff| {max_diff:.2e}")
    identical, tie_only = agreement(our_ids, our_scores, *lists[best_batch], args.tie_tol)
    max_diff = (our_scores - lists[best_batch][1]).abs().max().item()
    print(f"top-{args.beam} lists: {identical}/{n_users} identical, {tie_only} differ only in ties "
          f"(|score diff| <= {args.tie_tol}), {n_users - identical - tie_only} differ; "
          f"max |score diff| at equal rank {max_diff:.2e} (against generate at {best_batch} users per call)")

    # arithmetic: multiply-adds per user of both sides on these users, against this CPU's matmul peak
    with torch.no_grad():  # the calls that were timed: the same padding
        # in the calling thread: FlopCounterMode counts only its own thread's products, and decode_workers only
        # shares the same chunks out among threads
        workers, model.decode_workers = model.decode_workers, 1
        try:
            our_macs = macs_per_user(lambda: [ours(rows) for rows in chunks], n_users)
        finally:
            model.decode_workers = workers
        release_macs = macs_per_user(lambda: [release(rows, best_batch) for rows in chunks], n_users)
    peak = max(*peaks, matmul_peak(device))
    limit = peak / our_macs
    target = 10 * rates[best_batch]
    print(f"multiply-adds per user: ours {our_macs / 1e6:.1f} M, generate {release_macs / 1e6:.1f} M "
          f"(at {best_batch} users per call)")
    print(f"float32 matmul peak: {peak / 1e9:.1f} GMAC/s (torch.mm, best of {len(PEAK_SHAPES)} shapes in "
          f"{len(peaks) + 1} measurements, {torch.get_num_threads()} threads); ours reaches "
          f"{100 * our_macs * rates['ours'] / peak:.1f} % of it, generate {100 * release_macs * rates[best_batch] / peak:.1f} %")
    print(f"arithmetic limit: {limit:.1f} users/s (peak / our multiply-adds per user); 10x generate = "
          f"{target:.1f} users/s = {100 * target / limit:.1f} % of it; ours = {100 * rates['ours'] / limit:.1f} %")
    if target > limit:
        print(f"10x generate is beyond the arithmetic limit: the target is then 80 % of it, {0.8 * limit:.1f} users/s "
              f"(ours: {rates['ours']:.1f})")
    else:
        print(f"10x generate is within the arithmetic limit: the target is {target:.1f} users/s (ours: {rates['ours']:.1f})")

    if args.amp:
        compare_autocast(model, item_seq, item_seq_len, [rows.numpy() for rows in chunks], our_ids, device)

    if args.full_eval:
        processes = args.full_eval_nproc
        if processes > 1:  # the weights as a checkpoint, evaluated by that many processes of threads / nproc threads
            trainer = build_trainer(config, model, train_data.dataset)
            trainer.data_fingerprint = data_fingerprint(config, full_dataset)
            trainer._save_checkpoint(0, verbose=False)  # in the scratch folder's checkpoint_dir
            os.environ["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads() // processes))
            shared = evaluate_checkpoint(trainer.saved_model_file, {"nproc": processes}, splits=("test",))
            seconds, result, processes = shared["test_seconds"], shared["test_result"], shared["processes"]
        else:
            trainer = build_trainer(config, model)
            start = time.perf_counter()
            result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
            seconds = time.perf_counter() - start
        n_test = len(test_data.dataset.inter_feat) if hasattr(test_data, "dataset") else -1
        where = f", {processes} processes" if processes > 1 else ""
        print(f"full test evaluation: {seconds:.1f} s for {n_test} users{where} ({dict(result)})")
    else:
        n_test = sum(len(b[0]) for b in test_data)
        print(f"full test evaluation ({n_test} users), extrapolated from ours: {n_test / rates['ours']:.0f} s")
    print(f"speedup: {rates['ours'] / rates[best_batch]:.1f}")  # against generate's fastest batch size


if __name__ == "__main__":
    main()
