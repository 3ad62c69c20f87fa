"""LETTER-TIGER's two beam-search step functions, timed against each other in one process.

    OMP_NUM_THREADS=1 python benchmarks/t5_decoders.py --threads=1                  # both settings
    OMP_NUM_THREADS=1 python benchmarks/t5_decoders.py --settings=release --pairs=5

The two step functions of ``constrained_beam_search`` (same trie, same ``generate_items``, beam 20):

* ``hand``: ``recbole_letter.generation.T5BeamDecoder``, the hand-written incremental T5 decoder that
  ``LETTER_TIGER.build_step_fn`` uses (per-user cross-attention keys/values, its own self-attention cache
  in reused buffers);
* ``hf``: ``recbole_letter.generation.t5_cache_step_fn``: ``T5ForConditionalGeneration``'s own forward on
  its KV cache (``EncoderDecoderCache``, the self-attention cache reordered by ``beam_origin`` with
  ``reorder_cache``), as ``generate`` decodes.

The rule (docs/generation.md, "How TIGER decodes"): the hand-written decoder stays only while it is
>= 1.5x faster than ``hf`` at identical lists, measured in one run of this script.

Settings, both on ml-100k (the CPU profile's tokenizer: codes from ``LETTER_TIGER.tokenize``, trained on
the first run and cached under ``--checkpoint_dir``) and its first ``--users`` test users in RecBole's order:

* ``cpu``: the CPU profile's T5 (d_model 64, 2 + 2 layers, 4 heads), trained for ``--train_steps``
  batches (AdamW, the profile's learning rate) so that the lists are a trained model's;
* ``release``: the release's T5 (``properties/model/LETTER_TIGER.yaml``: d_model 128, d_ff 1024,
  4 + 4 layers, 6 heads), random init (seed 2020).

Each setting decodes all users once per path untimed, then ``--pairs`` times ``hand``, ``hf`` alternately
(the order flipping each pair). Prints per path the min and median seconds per call and milliseconds per
user, whether the item lists are identical (and the largest score difference), and ``speedup:`` =
median ``hf`` / median ``hand`` time per setting.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from recbole_letter.generation import T5BeamDecoder, t5_cache_step_fn  # noqa: E402
from recbole_letter.model.letter_tiger import LETTER_TIGER  # noqa: E402
from recbole_letter.quick_start import prepare  # noqa: E402

RELEASE = {"d_model": 128, "d_ff": 1024, "num_heads": 6, "d_kv": 64, "num_encoder_layers": 4,
           "num_decoder_layers": 4}


def step_functions(model):
    """``{"hand": fn, "hf": fn}``, each ``(item_seq, item_seq_len, workspace) -> step_fn`` for ``model``."""

    def hand(item_seq, item_seq_len, workspace=None):
        tokens, mask = model._trim(*model.history_code_tokens(item_seq, item_seq_len))
        return T5BeamDecoder(model.t5, tokens, mask, model.pad_token_id, max_steps=model.code_len,
                             workspace=workspace)

    def hf(item_seq, item_seq_len, workspace=None):
        tokens, mask = model._trim(*model.history_code_tokens(item_seq, item_seq_len))
        return t5_cache_step_fn(model.t5, tokens, mask, model.pad_token_id)

    return {"hand": hand, "hf": hf}


def test_histories(model, test_data, n_users):
    seqs, lens = [], []
    for batch in test_data:
        seqs.append(batch[0][model.ITEM_SEQ])
        lens.append(batch[0][model.ITEM_SEQ_LEN])
        if sum(len(s) for s in seqs) >= n_users:
            break
    return torch.cat(seqs)[:n_users], torch.cat(lens)[:n_users]


def train_briefly(model, train_data, steps, learning_rate):
    """``steps`` AdamW steps of the model's own loss over the training batches (RecBole's order)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    done = 0
    while done < steps:
        for interaction in train_data:
            optimizer.zero_grad()
            model.calculate_loss(interaction).backward()
            optimizer.step()
            done += 1
            if done == steps:
                break
    return model.eval()


def compare(model, item_seq, item_seq_len, functions, pairs):
    """Untimed warm-up of each path, then ``pairs`` alternating timed calls -> (seconds, lists) per path."""
    seconds, lists = {name: [] for name in functions}, {}
    order = list(functions)
    with torch.no_grad():
        for round_index in range(pairs + 1):
            for name in order if round_index % 2 == 0 else reversed(order):
                model.build_step_fn = functions[name]
                start = time.perf_counter()
                result = model.generate_items(item_seq, item_seq_len)
                elapsed = time.perf_counter() - start
                if round_index:
                    seconds[name].append(elapsed)
                    if not torch.equal(result[0], lists[name][0]):
                        raise RuntimeError(f"{name} gave other lists on a second call")
                else:
                    lists[name] = result
    del model.build_step_fn
    return seconds, lists


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default="cpu,release", help="comma list of cpu, release")
    parser.add_argument("--users", type=int, default=943, help="test users decoded per call (ml-100k has 943)")
    parser.add_argument("--pairs", type=int, default=4, help="timed (hand, hf) pairs after one untimed pair")
    parser.add_argument("--train_steps", type=int, default=300, help="training batches of the cpu setting")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--amp", action="store_true", help="decode under autocast (enable_amp)")
    parser.add_argument("--checkpoint_dir", default=os.path.join(tempfile.gettempdir(), "t5_decoders"),
                        help="where the tokenizer's codes are cached between runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.checkpoint_dir, exist_ok=True)
    os.chdir(args.checkpoint_dir)  # RecBole writes ./log*
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, beam 20, "
          f"{'autocast' if args.amp else 'float32'}")
    for setting in args.settings.split(","):
        config_dict = {"show_progress": False, "state": "WARNING", "checkpoint_dir": args.checkpoint_dir,
                       "beam_size": 20, "enable_amp": args.amp, "seed": 2020,
                       **(RELEASE if setting == "release" else {})}
        config, _, train_data, _, test_data = prepare("LETTER_TIGER", "ml-100k", config_dict=config_dict)
        torch.manual_seed(2020)
        model = LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset))
        weights = "random init"
        if setting == "cpu" and args.train_steps:
            start = time.perf_counter()
            train_briefly(model, train_data, args.train_steps, config["learning_rate"])
            weights = f"trained {args.train_steps} batches of {config['train_batch_size']} ({time.perf_counter() - start:.0f} s)"
        model.eval()
        item_seq, item_seq_len = test_histories(model, test_data, args.users)
        seconds, lists = compare(model, item_seq, item_seq_len, step_functions(model), args.pairs)
        users = len(item_seq)
        print(f"\n[{setting}] d_model {config['d_model']}, {config['num_encoder_layers']}+{config['num_decoder_layers']} "
              f"layers, {config['num_heads']} heads, {model.code_len} tokens per item, {model.n_items - 1} items, "
              f"{weights}; {users} users, beam_batch_size {model.beam_batch_size}, {args.pairs} timed pairs")
        for name, times in seconds.items():
            print(f"  {name:4s}: min {min(times):.3f} s, median {statistics.median(times):.3f} s per call = "
                  f"{1e3 * min(times) / users:.2f} / {1e3 * statistics.median(times) / users:.2f} ms per user "
                  f"(all: {', '.join(f'{t:.3f}' for t in times)})")
        same = torch.equal(lists["hand"][0], lists["hf"][0])
        finite = torch.isfinite(lists["hand"][1])
        diff = (lists["hand"][1][finite] - lists["hf"][1][finite]).abs().max().item()
        rows = (lists["hand"][0] == lists["hf"][0]).all(1).sum().item()
        print(f"  lists: {'identical' if same else 'differ'} ({rows}/{users} users identical); "
              f"max |score diff| {diff:.2e}")
        print(f"  speedup: {statistics.median(seconds['hf']) / statistics.median(seconds['hand']):.3f} "
              f"(hand-written over hf, median; min: {min(seconds['hf']) / min(seconds['hand']):.3f})")


if __name__ == "__main__":
    main()
