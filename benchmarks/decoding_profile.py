"""Where our constrained beam search spends its time on a CPU: a ``torch.profiler`` table of one decoding pass,
and the decoder's projection matmuls timed alone (warm, and after a write that flushes the caches).

    python benchmarks/decoding_profile.py --dataset=Beauty --data_path=../shared/data --threads=1

LETTER_TIGER at the release's architecture (random init, seed 2020) on LETTER's released codes of the dataset
(``--codes``: another ``*.index.json``), beam 20, ``--users`` test users (spread over the split, or its first:
``--pool``, as ``decoding.py``), in one decoding thread (``decode_workers: 1``) at the given torch threads. Prints
users per second without the profiler, the profiler's table (self CPU time, grouped by operator and input shapes)
and the matmul timings, whose rates say how far the decoder's matmuls run from what the same shapes reach alone
(docs/generation.md).
"""

import argparse
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
