"""Decoding speed of this checkout's TIGER decoder against an earlier commit's, interleaved in one process.

    python benchmarks/decoder_ab.py --base=e4ed8db --dataset=Beauty --data_path=../shared/data --threads=2

Same LETTER_TIGER weights (release architecture, random init), same users (--users test users, by default spread
evenly over the split: ``decoding.py``'s --pool), ``generate_items`` (``model/generative_recommender.py``: the
chunks and their threads) with the T5 decoder (``generation/t5_decoder.py``'s ``T5BeamDecoder``; before it moved
there, ``model/letter_tiger.py``'s ``_T5BeamDecoder``) and the CPU feed-forward's activation, all of ``--base``
(loaded from ``git show``; what those files import, and the model's other methods, are this checkout's) and of
the working tree, alternating over --rounds, the first round untimed. ``--decoder_only`` swaps the
decoder and the activation only, as the script did before stop 48 (a base older than 4eb1ead decodes in one thread,
so swapping its ``generate_items`` too would also compare one decoding thread with two); ``--pool=first`` picks the
users as before then.
Prints both rates, the ratio, and whether the two decoders gave the same lists.
"""

import argparse
import importlib.util
import inspect
import os
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def module_at(rev, path, name, folder):
    """The file ``path`` of commit ``rev`` imported as module ``name`` (``None`` if the commit has no such file)."""
    shown = subprocess.run(["git", "-C", REPO, "show", f"{rev}:{path}"], capture_output=True, text=True)
    if shown.returncode:
        return None
    source = shown.stdout
    file = os.path.join(folder, f"{name}.py")
    with open(file, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(name, file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--dataset", default="Beauty")
    parser.add_argument("--data_path", default=os.path.join(REPO, "..", "shared", "data"))
    parser.add_argument("--codes", default=None, help="*.index.json (default: <data_path>/<dataset>/raw/<dataset>.index.json)")
    parser.add_argument("--users", type=int, default=1024)
    parser.add_argument("--pool", default="spread", choices=["spread", "first"], help="test users spread evenly over "
                        "the split, or its first --users (decoding.py's --pool)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds of both decoders; the first is untimed")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--amp", action="store_true", help="decode under autocast (enable_amp)")
    parser.add_argument("--decoder_only", action="store_true", help="both sides use this checkout's generate_items "
                        "(the script before stop 48 swapped only the decoder and the activation)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_path = os.path.abspath(args.data_path)
    from recbole_letter.benchmark import scratch_dir

    work = scratch_dir("decoder_ab_")
    old_decoder = module_at(args.base, "recbole_letter/generation/t5_decoder.py", "base_t5_decoder", work)
    if old_decoder is None:
        old_tiger = module_at(args.base, "recbole_letter/model/letter_tiger.py", "base_letter_tiger", work)
        old_decoder_class = old_tiger._T5BeamDecoder
    else:
        old_decoder_class = old_decoder.T5BeamDecoder
    old_cpu = module_at(args.base, "recbole_letter/model/t5_cpu.py", "base_t5_cpu", work)
    old_recommender = None if args.decoder_only else module_at(
        args.base, "recbole_letter/model/generative_recommender.py", "base_recommender", work)
    if old_recommender is None and not args.decoder_only:
        print(f"{args.base} has no recbole_letter/model/generative_recommender.py: both sides use this checkout's "
              "generate_items")

    from decoding import test_histories
    from recbole_letter.model import t5_cpu
    from recbole_letter.model.letter_tiger import LETTER_TIGER
    from recbole_letter.quick_start import prepare

    codes = os.path.abspath(args.codes or os.path.join(data_path, args.dataset, "raw", f"{args.dataset}.index.json"))
    config_dict = {"show_progress": False, "state": "WARNING", "checkpoint_dir": os.path.join(work, "saved"),
                   "data_path": data_path, "item_codes_file": codes, "enable_amp": args.amp}
    config, _, train_data, _, test_data = prepare("LETTER_TIGER", args.dataset, config_dict=config_dict)
    model = LETTER_TIGER(config, train_data.dataset, LETTER_TIGER.tokenize(config, train_data.dataset)).eval()
    item_seq, item_seq_len = test_histories(model, test_data, args.users, args.pool)

    # the base's buffers reused from chunk to chunk too, where its decoder has them (since 2026-11-28)
    takes_workspace = "workspace" in inspect.signature(old_decoder_class).parameters

    def base_step_fn(self, seq, seq_len, workspace=None):
        tokens, mask = self._trim(*self.history_code_tokens(seq, seq_len))
        extra = {"workspace": workspace} if takes_workspace else {}
        return old_decoder_class(self.t5, tokens, mask, self.pad_token_id, max_steps=self.code_len, **extra)

    # generate_items too (how the users are sorted, chunked and shared out among decoding threads)
    from recbole_letter.model.generative_recommender import GenerativeRecommender

    this_generate_items = GenerativeRecommender.generate_items
    base_generate_items = (this_generate_items if old_recommender is None
                           else old_recommender.GenerativeRecommender.generate_items)
    sides = {"base": (base_step_fn, getattr(old_cpu.FeedForward, "_activation", None), base_generate_items),
             "this": (LETTER_TIGER.build_step_fn, t5_cpu.FeedForward._activation, this_generate_items)}
    seconds, lists = dict.fromkeys(sides, 0.0), {}
    swapped = [(LETTER_TIGER, "build_step_fn"), (LETTER_TIGER, "generate_items"), (t5_cpu.FeedForward, "_activation")]
    saved = {(cls, name): cls.__dict__.get(name) for cls, name in swapped}
    try:
        with torch.no_grad():
            for round_index in range(args.rounds):
                for name in sides if round_index % 2 == 0 else reversed(list(sides)):
                    step_fn, activation, generate_items = sides[name]
                    LETTER_TIGER.build_step_fn = step_fn
                    LETTER_TIGER.generate_items = generate_items
                    if activation is not None:
                        t5_cpu.FeedForward._activation = activation
                    start = time.perf_counter()
                    lists[name] = model.generate_items(item_seq, item_seq_len)
                    if round_index:
                        seconds[name] += time.perf_counter() - start
    finally:  # the classes as they were: the script also runs inside the tests' process
        for (cls, name), value in saved.items():
            if value is not None:
                setattr(cls, name, value)
            elif name in cls.__dict__:
                delattr(cls, name)
    timed_users = len(item_seq) * (args.rounds - 1)
    rates = {name: timed_users / s for name, s in seconds.items()}
    same = torch.equal(lists["base"][0], lists["this"][0])
    diff = (lists["base"][1] - lists["this"][1]).abs().max().item()
    print(f"{args.base}: {rates['base']:.1f} users/s; this checkout: {rates['this']:.1f} users/s "
          f"(torch threads {torch.get_num_threads()}, {'autocast' if args.amp else 'float32'})")
    print(f"lists {'identical' if same else 'differ'}; max |score diff| at equal rank {diff:.2e}")
    print(f"speedup: {rates['this'] / rates['base']:.3f}")


if __name__ == "__main__":
    main()
