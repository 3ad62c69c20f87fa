"""LETTER-LC-Rec step costs: seconds per LoRA training step and per evaluated user, on ml-100k.

    python benchmarks/lc_rec.py --llm_path=/path/to/causal-lm --batch=8 --steps=10 --eval_users=32
    python benchmarks/lc_rec.py --random_llm=llama2-7b --tokenizer=/path/to/any-hf-tokenizer \\
        --dtype=bfloat16 --batch=8                 # a LLaMA-2-7B-shaped model with random weights

Timing only, not accuracy: the items get random unique 4 x 256 codes and ``--random_llm`` builds the
LM from a ``transformers.LlamaConfig`` (random weights, no download) and writes it to a scratch folder,
so the loading path is the one ``llm_path`` users take. Prints the LoRA / code-row trainable parameter
counts, the padded sequence length, the median training step (forward, backward, AdamW) and the
decoding time per user (beam 20, trie-constrained), plus peak GPU memory on a GPU.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

RANDOM_SHAPES = {  # LlamaConfig keys; vocab_size comes from the tokenizer
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, max_position_embeddings=4096),
    "llama2-13b": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                       num_key_value_heads=40, max_position_embeddings=4096),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, max_position_embeddings=1024),
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, max_position_embeddings=2048),
}  # fmt: skip


def write_random_llm(shape, tokenizer_path, dtype, folder):
    """A ``shape``-sized LlamaForCausalLM with random weights + ``tokenizer_path``'s tokenizer in ``folder``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **RANDOM_SHAPES[shape])  # fmt: skip
    device = "cuda" if torch.cuda.is_available() else "cpu"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.save_pretrained(folder)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return n_params


def random_codes_file(dataset_dir, path, seed=0):
    """Random unique 4-level codes (4 x 256) for every item of an atomic ``.inter`` file."""
    inter = next(Path(dataset_dir).glob("*.inter"))
    items = sorted({line.split("\t")[1] for line in inter.read_text().splitlines()[1:]}, key=str)
    rng = np.random.default_rng(seed)
    flat = rng.choice(256**3, size=len(items), replace=False)
    codes = np.stack(np.unravel_index(flat, [256, 256, 256]), 1)
    codes = np.concatenate([codes, rng.integers(0, 256, (len(items), 1))], 1)
    index = {item: [f"<{'abcd'[level]}_{c}>" for level, c in enumerate(row)] for item, row in zip(items, codes.tolist())}
    Path(path).write_text(json.dumps(index))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--llm_path", default=None)
    parser.add_argument("--random_llm", choices=sorted(RANDOM_SHAPES), default=None)
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder for --random_llm")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--eval_users", type=int, default=32)
    parser.add_argument("--beam_batch_size", type=int, default=16)
    parser.add_argument("--gradient_checkpointing", action="store_true")
    parser.add_argument("--amp", action="store_true", help="autocast training and decoding (enable_amp)")
    args = parser.parse_args()
    if (args.llm_path is None) == (args.random_llm is None):
        parser.error("give exactly one of --llm_path and --random_llm")

    import recbole

    from recbole_letter.benchmark import scratch_dir
    from recbole_letter.plan import timed_train_step
    from recbole_letter.common import amp_dtype
    from recbole_letter.model.letter_lc_rec import LETTER_LC_Rec
    from recbole_letter.quick_start import prepare

    # paths given relative to where the command started, before moving into the scratch folder
    llm_path = args.llm_path and os.path.abspath(args.llm_path)
    tokenizer = args.tokenizer and os.path.abspath(args.tokenizer)
    scratch = scratch_dir("lc_rec_bench_")
    if args.random_llm:
        if not args.tokenizer:
            parser.error("--random_llm needs --tokenizer")
        start = time.perf_counter()
        llm_path = os.path.join(scratch, args.random_llm)
        n_params = write_random_llm(args.random_llm, tokenizer, args.dtype, llm_path)
        print(f"random {args.random_llm}: {n_params / 1e9:.2f} B parameters, written in {time.perf_counter() - start:.0f}s", flush=True)
    data_dir = Path(recbole.__file__).parent / "dataset_example" / args.dataset
    random_codes_file(data_dir, "codes.json")
    cfg = {"llm_path": llm_path, "llm_dtype": args.dtype, "item_codes_file": "codes.json", "train_batch_size": args.batch,
           "eval_batch_size": args.eval_users, "beam_batch_size": args.beam_batch_size, "freeze_code_embeddings": False,
           "gradient_checkpointing": args.gradient_checkpointing, "enable_amp": args.amp, "show_progress": False, "state": "WARNING"}  # fmt: skip
    start = time.perf_counter()
    config, _, train, _, test = prepare("LETTER_LC_Rec", args.dataset, config_dict=cfg)
    model = LETTER_LC_Rec(config, train.dataset, LETTER_LC_Rec.tokenize(config, train.dataset)).to(config["device"])
    device = config["device"]
    print(f"load {time.perf_counter() - start:.1f}s on {device}; vocab {model.vocab_size}; "
          f"trainable {model.trainable_parameter_counts()}", flush=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.01)
    model.train()
    batches, times = iter(train), []
    first = next(iter(train)).to(device)
    sequences = model.training_sequences(first[model.ITEM_SEQ], first[model.ITEM_SEQ_LEN],
                                         model.item_code_tokens[first[model.POS_ITEM_ID]])  # fmt: skip
    print(f"sequence (prompt + response, padded) {tuple(sequences['input_ids'].shape)}, "
          f"real tokens per row {sequences['attention_mask'].sum(1).float().mean().item():.0f}", flush=True)
    for step in range(args.steps + 1):  # step 0 warms up (kernels, allocator)
        seconds = timed_train_step(model, next(batches).to(device), optimizer,
                                   amp_dtype(config) if args.amp else None)
        if step:
            times.append(seconds)
    print(f"train step (batch {args.batch}, {args.dtype}{', autocast' if args.amp else ''}): median {np.median(times):.3f}s over {len(times)} steps",
          flush=True)
    model.eval()
    interaction = next(iter(test))[0].to(device)
    start = time.perf_counter()
    with torch.no_grad():
        scores = model.full_sort_predict(interaction)
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    valid = bool(torch.isfinite(scores).sum(1).eq(20).all())
    print(f"decode: {scores.shape[0]} users in {seconds:.2f}s = {seconds / scores.shape[0] * 1000:.0f} ms/user "
          f"(beam 20, {args.beam_batch_size} users at once); 20 real items per user: {valid}", flush=True)
    if device.type == "cuda":
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB ({torch.cuda.get_device_name()})")


if __name__ == "__main__":
    main()
