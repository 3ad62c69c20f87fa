"""The training loop of ``LetterTrainer`` against RecBole's, on the same batches: seconds per batch.

    python benchmarks/train_loop.py --dataset=Beauty --data_path=../shared/data \\
        --item_codes_file=artifacts/Beauty.letter.index.json --batches=30

RecBole's ``Trainer._train_epoch`` reads every batch's loss (``loss.item()``) and tests it for NaN before
the backward pass, and LETTER_TIGER's forward used to find each batch's history width on the device: on
a GPU the host waited for the device three times a batch. Ours sums the losses on the device, reads them
once per epoch, cuts the histories on the host (``LetterTrainer``, ``LETTER_TIGER.host_batch``) and runs a
backward pass per length bucket (``loss_chunks``; RecBole's loop: one for the whole batch).
Both loops run the first ``--batches`` training batches of the given model (shipped config plus
``--key=value`` overrides, as ``run_recbole_letter.py``), from the same weights, optimiser state and
random state, alternating over ``--rounds`` after one untimed round; the "recbole" side trims histories
on the device as before. Prints both rates, whether the two epochs' losses and weights agree, and as
its last line ``speedup: <recbole s/batch / ours s/batch>``. On a CPU the waits cost nothing (nothing
to overlap there) and the per-bucket backward passes are what differs; on a GPU (one bucket) the waits.
Under ``enable_scaler`` with ``clip_grad_norm`` (the generators' default) the weights differ: RecBole's loop
clips the loss-scaled gradients, ours the true ones.
``--loops=ours`` (or ``recbole``) runs one loop alone and prints, last, the process's peak memory (RSS).
"""

import argparse
import copy
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="LETTER_TIGER")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--batches", type=int, default=20, help="training batches per loop and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of both loops; the first is untimed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--loops", default="recbole,ours",
                        help="loops to run; one alone gives its peak memory (the process's peak RSS, printed last)")
    args, rest = parser.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from recbole.trainer import Trainer

    from recbole_letter.benchmark import BatchList, use_tf32
    from recbole_letter.quick_start import build_model, build_trainer, parse_overrides, prepare
    from recbole_letter.trainer import default_autocast_dtype

    overrides = {"show_progress": False, "state": "WARNING", **parse_overrides(rest)}
    config, _, train_data, _, _ = prepare(args.model, args.dataset, config_dict=overrides)
    device = config["device"]
    use_tf32(device)  # as budget_runs trains
    model = build_model(config, train_data.dataset).to(device)
    trainer = build_trainer(config, model)
    batches = BatchList()
    for interaction in train_data:
        if len(batches) == args.batches:
            break
        batches.append(interaction)
    start = {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
             "rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
    trim = getattr(model, "_trim", None)

    def device_trimmed_inputs(item_seq, item_seq_len):  # LETTER_TIGER's forward before host_batch
        return trim(*model.history_code_tokens(item_seq, item_seq_len))

    def epoch(loop):
        model.load_state_dict(start["model"])
        trainer.optimizer.load_state_dict(start["optimizer"])
        torch.set_rng_state(start["rng"])
        if start["cuda_rng"] is not None:
            torch.cuda.set_rng_state(start["cuda_rng"], device)
        if loop == "recbole" and trim is not None and not model.torch_compile:
            model.forward_inputs = device_trimmed_inputs
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        try:
            if loop == "recbole":
                with default_autocast_dtype(device.type, trainer.amp_dtype):
                    loss = Trainer._train_epoch(trainer, batches, 0)
            else:
                loss = trainer._train_batches(batches, 0)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        finally:
            model.__dict__.pop("forward_inputs", None)  # the class's own again
        return time.perf_counter() - began, loss

    print(f"{args.model} on {args.dataset}: {len(batches)} batches of {config['train_batch_size']}, device {device}, "
          f"torch threads {torch.get_num_threads()}, enable_amp {config['enable_amp']}")
    loops = args.loops.split(",")
    seconds, losses, weights = dict.fromkeys(loops, 0.0), {}, {}
    for round_index in range(args.rounds):
        for loop in loops if round_index % 2 == 0 else reversed(loops):
            elapsed, losses[loop] = epoch(loop)
            weights[loop] = {key: value.detach().clone() for key, value in model.state_dict().items()}
            if round_index:
                seconds[loop] += elapsed
            print(f"round {round_index}{' (untimed)' if not round_index else ''}: {loop} "
                  f"{elapsed / len(batches):.4f} s/batch", flush=True)
    timed = len(batches) * max(1, args.rounds - 1)
    per_batch = {loop: s / timed for loop, s in seconds.items()}
    print("; ".join(f"{loop} loop: {rate:.4f} s/batch" for loop, rate in per_batch.items()))
    if len(loops) == 2:
        weight_diff = max((weights["ours"][key].float() - value.float()).abs().max().item()
                          for key, value in weights["recbole"].items())
        print(f"epoch loss recbole {losses['recbole']!r}, ours {losses['ours']!r}; max |weight diff| {weight_diff:.2e}")
        print(f"speedup: {per_batch['recbole'] / per_batch['ours']:.3f}")
    else:
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
