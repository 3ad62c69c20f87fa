"""Where our constrained beam search spends its time on a CPU: its wall time by stage, a ``torch.profiler`` table
of one decoding pass, and the decoder's projection matmuls timed alone (warm, and after a cache flush).

    python benchmarks/decoding_profile.py --dataset=Beauty --data_path=../shared/data --threads=1

LETTER_TIGER at the release's architecture (random init, seed 2020) on LETTER's released codes of the dataset
(``--codes``: another ``*.index.json``), beam 20, ``--users`` test users (spread over the split, or its first:
``--pool``, as ``decoding.py``), in one decoding thread (``decode_workers: 1``) at the given torch threads. Prints
users per second without the profiler; the wall time of one more pass split by stage and the projections'
(``F.linear``) share with their rates in context, by wrapping the functions in timers (no profiler, whose own
overhead inflates the many small operations); the profiler's table (self CPU time, grouped by operator and input
shapes); and the matmul timings, whose rates say how far the decoder's matmuls run from what the same shapes reach
alone (docs/generation.md).
"""

import argparse
import contextlib
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.profiler import profile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# the decoder's projections at 64 users x 20 beams (rows) and release size: (rows, in, out)
MATMUL_SHAPES = [(1280, 128, 1152), (1280, 128, 1024), (1280, 1024, 128), (1280, 384, 128)]


def matmul_ms(rows, inputs, outputs, repeats=40, flush=None):
    """Mean milliseconds of ``F.linear`` on ``[rows, inputs] x [outputs, inputs]^T``, each call after
    ``flush()`` when given (untimed)."""
    x, weight = torch.randn(rows, inputs), torch.randn(outputs, inputs)
    for _ in range(5):
        F.linear(x, weight)
    total = 0.0
    for _ in range(repeats):
        if flush is not None:
            flush()
        start = time.perf_counter()
        F.linear(x, weight)
        total += time.perf_counter() - start
    return total / repeats * 1e3


# (label, owner, attribute) of the functions whose wall time stage_times sums; nested ones count in their callers
STAGES = [
    ("encoder (encode_by_length)", "t5_decoder", "encode_by_length"),
    ("decoder set-up (encoder + cross-attention keys/values)", "T5BeamDecoder", "__init__"),
    ("decoder steps", "T5BeamDecoder", "__call__"),
    ("  of which self-attention (_attend)", "T5BeamDecoder", "_attend"),
    ("  of which cache reorder (_follow_beams)", "T5BeamDecoder", "_follow_beams"),
    ("beam search (steps included)", "generative_recommender", "constrained_beam_search"),
]


@contextlib.contextmanager
def timed(owner, name, totals, key):
    """``owner.name`` wrapped so that each call adds its wall seconds to ``totals[key]``; restored on exit."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals[key] = totals.get(key, 0.0) + time.perf_counter() - start

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, original)


def stage_times(model, item_seq, item_seq_len):
    """One ``generate_items`` pass with :data:`STAGES` and ``F.linear`` timed -> ``(wall seconds, {stage:
    seconds}, {(rows, in, out): [calls, seconds]})``. One decoding thread: the stages' times then add up
    within the wall time."""
    from recbole_letter.generation import t5_decoder
    from recbole_letter.model import generative_recommender

    owners = {"t5_decoder": t5_decoder, "T5BeamDecoder": t5_decoder.T5BeamDecoder,
              "generative_recommender": generative_recommender}
    totals, products = {}, {}
    linear = F.linear

    def timed_linear(x, weight, bias=None):
        start = time.perf_counter()
        out = linear(x, weight, bias)
        seconds = time.perf_counter() - start
        entry = products.setdefault((x.numel() // x.shape[-1], x.shape[-1], weight.shape[0]), [0, 0.0])
        entry[0] += 1
        entry[1] += seconds
        return out

    with contextlib.ExitStack() as stack:
        for label, owner, name in STAGES:
            stack.enter_context(timed(owners[owner], name, totals, label))
        F.linear = timed_linear
        stack.callback(setattr, F, "linear", linear)
        start = time.perf_counter()
        model.generate_items(item_seq, item_seq_len)
        wall = time.perf_counter() - start
    return wall, totals, products


def print_stage_times(wall, totals, products, rows=6):
    print(f"wall time by stage (one more pass, functions wrapped in timers, no profiler): {wall:.3f} s")
    for label, _, _ in STAGES:
        print(f"  {label}: {totals.get(label, 0.0):.3f} s ({100 * totals.get(label, 0.0) / wall:.1f} %)")
    spent = sum(seconds for _, seconds in products.values())
    print(f"  projections (F.linear, across the stages): {spent:.3f} s ({100 * spent / wall:.1f} %); the "
          f"{rows} largest, in context:")
    for (m, k, n), (calls, seconds) in sorted(products.items(), key=lambda item: -item[1][1])[:rows]:
        print(f"    [{m} x {k}] x [{k} x {n}]: {calls} calls, {1e3 * seconds / calls:.2f} ms each, "
              f"{m * k * n * calls / seconds / 1e9:.1f} GMAC/s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="Beauty")
    parser.add_argument("--data_path", default=os.path.join("..", "shared", "data"))
    parser.add_argument("--codes", default=None, help="*.index.json (default: <data_path>/<dataset>/raw/<dataset>.index.json)")
    parser.add_argument("--users", type=int, default=512)
    parser.add_argument("--pool", default="spread", choices=["spread", "first"], help="test users spread evenly over "
                        "the split, or its first --users (decoding.py's --pool)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--rows", type=int, default=30, help="rows of the profiler table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_path = os.path.abspath(args.data_path)  # paths given relative to where the command runs
    codes = os.path.abspath(args.codes or os.path.join(data_path, args.dataset, "raw", f"{args.dataset}.index.json"))
    from recbole_letter.benchmark import scratch_dir

    work = scratch_dir("decoding_profile_")

    from decoding import test_histories
    from recbole_letter.model.letter_tiger import LETTER_TIGER
    from recbole_letter.quick_start import prepare

    config_dict = {"show_progress": False, "state": "WARNING", "beam_size": 20, "seed": 2020, "data_path": data_path,
                   "item_codes_file": codes, "checkpoint_dir": os.path.join(work, "saved")}
    config, _, train_data, _, test_data = prepare("LETTER_TIGER", args.dataset, config_dict=config_dict)
    model = LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset)).eval()
    # one decoding thread at torch's thread count: the kernels' times then compare with the products timed alone
    # below at that count (decode_workers would split them among threads of fewer torch threads)
    model.decode_workers = 1
    item_seq, item_seq_len = test_histories(model, test_data, args.users, args.pool)
    with torch.no_grad():
        model.generate_items(item_seq[:64], item_seq_len[:64])  # warm-up
        start = time.perf_counter()
        model.generate_items(item_seq, item_seq_len)
        print(f"{len(item_seq) / (time.perf_counter() - start):.1f} users/s without the profiler, "
              f"torch threads {torch.get_num_threads()}, one decoding thread")
        print_stage_times(*stage_times(model, item_seq, item_seq_len))
        with profile(record_shapes=True) as prof:
            model.generate_items(item_seq, item_seq_len)
    print(prof.key_averages(group_by_input_shape=True).table(sort_by="self_cpu_time_total", row_limit=args.rows,
                                                              max_shapes_column_width=80))
    junk = torch.randn(16 * 2**20)  # 64 MB: more than the caches of one core
    for rows, inputs, outputs in MATMUL_SHAPES:
        flops = 2 * rows * inputs * outputs
        warm, flushed = matmul_ms(rows, inputs, outputs), matmul_ms(rows, inputs, outputs, flush=lambda: junk.add_(1))
        print(f"[{rows} x {inputs}] x [{inputs} x {outputs}] alone: {warm:.3f} ms warm ({flops / warm / 1e6:.0f} "
              f"GFLOP/s), {flushed:.3f} ms after a cache flush ({flops / flushed / 1e6:.0f} GFLOP/s)")


if __name__ == "__main__":
    main()
