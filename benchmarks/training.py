"""Training-step cost of a generative recommender: one padded batch vs length-bucketed sub-batches,
with and without mixed precision, with and without the CPU kernels (T5 or LC-Rec), eager or compiled (T5).

    python benchmarks/training.py --dataset=Beauty --data_path=../shared/data \\
        --item_codes_file=../shared/data/Beauty/raw/Beauty.index.json --buckets=1,4,8
    python benchmarks/training.py --dataset=Beauty ... --buckets=8 --amp=0,1   # float32 vs autocast
    python benchmarks/training.py --dataset=Beauty ... --buckets=8 --amp=1 --cpu_kernels=0,1
    python benchmarks/training.py --dataset=Beauty ... --config_files=examples/small_t5_cpu.yaml
    python benchmarks/training.py --model=LETTER_LC_Rec --llm_path=saved/smollm2-135m-instruct \
        --train_batch_size=8 --buckets=8 --amp=1 --cpu_kernels=0,1 --threads=1
    python benchmarks/training.py --dataset=Beauty ... --buckets=1 --amp=0,1 --compile=0,1,reduce-overhead

Times forward + backward + AdamW step on the same training batches (RecBole's loader, shipped config
plus the given files / ``--key=value`` overrides; prepared on the host by the model's ``host_batch`` as
``LetterTrainer`` does, then moved to the device; every step waits for the device to finish) for each
``length_buckets`` value and each ``--amp`` value (1 = autocast as our trainer does under
``enable_amp``: to ``amp_dtype``, bfloat16 by default) and each ``--cpu_kernels`` value
(``t5_cpu_kernels`` of LETTER_TIGER / TIGER: 0 = ``transformers``' T5
modules, 1 = ``recbole_letter.model.t5_cpu``; ``llm_cpu_kernels`` of the LC-Rec models: 0 = the LM's
loaded attention and ``peft``'s LoRA dropout, 1 = eager attention and ``t5_cpu``'s dropout; default:
the config's) and each ``--compile`` value (``torch_compile`` of LETTER_TIGER / TIGER: 0 = eager, 1 =
``torch.compile``'s default mode, or a ``torch_compile_mode`` such as ``reduce-overhead``; only with
``--buckets=1`` and without CPU kernels), after ``--warmup`` untimed steps of every setting (their
time, a compiler's included, is printed), interleaved over
``--rounds`` so that machine load hits all settings alike, with the weights restored before each
setting. Prints seconds per batch, the projected seconds per epoch and, as the last line, the speedup
of the best setting over the first one. ``--best_overrides=FILE`` also writes the fastest setting (by
step time: a compiler's minutes are not counted) as ``key=value,...`` overrides for a run, so that one
command can time the settings and then train with the fastest (a borrowed GPU, one call):

    python benchmarks/training.py ... --amp=0,1 --compile=0,1,reduce-overhead --best_overrides=best.txt &&
        python benchmarks/budget_runs.py ... "lt:LETTER_TIGER:Beauty:$(cat best.txt),eval_step=2"
"""

import argparse
import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="LETTER_TIGER")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--buckets", default="1,4,8")
    parser.add_argument("--amp", default="0", help="comma list of 0 (float32) / 1 (autocast)")
    parser.add_argument("--cpu_kernels", default="", help="comma list of 0 / 1 (default: config)")
    parser.add_argument("--compile", default="0", help="comma list of 0 (eager) / 1 / a torch_compile_mode (T5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of every setting, first")
    parser.add_argument("--batches", type=int, default=6, help="timed batches per setting and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--config_files", default="")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--best_overrides", default="", help="write the fastest setting here as key=value,...")
    args, rest = parser.parse_known_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from recbole_letter.benchmark import use_tf32
    from recbole_letter.plan import timed_train_step
    from recbole_letter.common import amp_dtype
    from recbole_letter.trainer import batch_to_device
    from recbole_letter.model import get_model_class
    from recbole_letter.model.letter_lc_rec import LETTER_LC_Rec
    from recbole_letter.quick_start import parse_overrides, prepare

    overrides = {"show_progress": False, "state": "WARNING", **parse_overrides(rest)}

    config_files = [f for f in args.config_files.split(",") if f]
    config, _, train_data, _, _ = prepare(args.model, args.dataset, config_files, overrides)
    device = config["device"]
    model_class = get_model_class(args.model)
    kernel_key = "llm_cpu_kernels" if issubclass(model_class, LETTER_LC_Rec) else "t5_cpu_kernels"
    kernel_values = [bool(int(k)) for k in args.cpu_kernels.split(",") if k] or [config[kernel_key]]
    # compiled: False (eager), True (torch.compile's default mode) or a torch_compile_mode
    compile_values = [{"0": False, "1": True}.get(c, c) for c in args.compile.split(",")]
    if any(compile_values) and issubclass(model_class, LETTER_LC_Rec):
        raise SystemExit("error: --compile is a T5 setting (torch_compile of LETTER_TIGER / TIGER)")
    use_tf32(device)  # as budget_runs trains
    # a compiled T5 runs whole batches (length_buckets 1) with transformers' modules (no CPU kernels)
    settings = [(int(b), bool(int(a)), k, c) for b in args.buckets.split(",") for a in args.amp.split(",")
                for k in kernel_values for c in compile_values if not c or (int(b) == 1 and not k)]
    if not settings:
        raise SystemExit("error: no setting to time: a compiled T5 needs --buckets=1 and no CPU kernels")
    models = {}
    for _, _, kernels, compiled in settings:  # each setting starts from the same weights (state below)
        if (kernels, compiled) not in models:
            config[kernel_key], config["torch_compile"] = kernels, bool(compiled)
            config["torch_compile_mode"] = compiled if isinstance(compiled, str) else None
            config["length_buckets"] = None  # set per setting below
            models[kernels, compiled] = model_class(config, train_data.dataset, model_class.tokenize(config, train_data.dataset)).to(device).train()
    model = next(iter(models.values()))
    state = copy.deepcopy(model.state_dict())
    timed = args.batches * args.rounds
    needed = args.warmup + timed
    batches = []
    for interaction in train_data:
        batches.append(interaction)
        if len(batches) == needed:
            break
    if len(batches) < needed:
        raise SystemExit(f"error: {needed} batches needed (--warmup + --batches x --rounds), the loader has "
                         f"{len(batches)}: use a smaller --train_batch_size or fewer batches")
    lengths = torch.cat([b[model.ITEM_SEQ_LEN] for b in batches]).float()
    # each model's batches as LetterTrainer hands them over: prepared on the host (host_batch), then moved
    on_device = {key: [batch_to_device(m, b, device) for b in batches] for key, m in models.items()}
    print(f"{args.model} on {args.dataset}: {len(train_data)} batches of {config['train_batch_size']} per epoch; "
          f"history length (items) mean {lengths.mean():.1f}, max {int(lengths.max())}; torch threads "
          f"{torch.get_num_threads()}; device {device}")
    compile_names = {False: "eager", True: "compiled"}
    name = {setting: f"length_buckets={setting[0]}" + (" autocast" if setting[1] else "")
            + ("" if len(kernel_values) == 1 else f" {kernel_key}={setting[2]}")
            + ("" if len(compile_values) == 1 else f" {compile_names.get(setting[3], setting[3])}")
            for setting in settings}

    def steps(setting, first, last):
        buckets, amp, kernels, compiled = setting
        model = models[kernels, compiled]
        model.load_state_dict(state)
        model.length_buckets = buckets
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        return sum(timed_train_step(model, interaction, optimizer, amp_dtype(config) if amp else None)
                   for interaction in on_device[kernels, compiled][first:last])

    if args.warmup:  # one-off costs (the compiler's, first kernels) before anything is timed
        for setting in settings:
            print(f"{name[setting]}: {steps(setting, 0, args.warmup):.1f} s for {args.warmup} warm-up steps",
                  flush=True)
    seconds = dict.fromkeys(settings, 0.0)
    for round_index in range(args.rounds):
        first = args.warmup + round_index * args.batches
        for setting in settings:
            seconds[setting] += steps(setting, first, first + args.batches)
    for setting in settings:
        per_batch = seconds[setting] / timed
        print(f"{name[setting]}: {per_batch:.3f} s/batch, ~{per_batch * len(train_data) / 60:.1f} min/epoch")
    if args.best_overrides:
        fastest = setting_overrides(min(settings, key=seconds.get), kernel_key, config["torch_compile_backend"],
                                    any(compile_values))
        with open(args.best_overrides, "w") as f:
            f.write(",".join(f"{key}={value}" for key, value in fastest.items()) + "\n")
    base = settings[0]
    best = min(settings[1:], key=seconds.get) if len(settings) > 1 else base
    print(f"speedup: {seconds[base] / seconds[best]:.2f} ({name[best]} vs {name[base]})")


def setting_overrides(setting, kernel_key, backend, compile_keys):
    """A timed setting as the config overrides that give it in a run (``backend``: the
    ``torch_compile_backend`` it was compiled with, if one was given; ``compile_keys``: name
    ``torch_compile`` also when it is off, as the settings compared both)."""
    buckets, amp, kernels, compiled = setting
    overrides = {"length_buckets": buckets, "enable_amp": amp}
    if kernels is not None:
        overrides[kernel_key] = kernels
    if compile_keys:
        overrides["torch_compile"] = bool(compiled)
    if isinstance(compiled, str):
        overrides["torch_compile_mode"] = compiled
    if compiled and backend:
        overrides["torch_compile_backend"] = backend
    return overrides


if __name__ == "__main__":
    main()
