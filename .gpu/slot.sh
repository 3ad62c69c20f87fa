#!/usr/bin/env bash
# Table 1's release-size generator rows in one GPU slot, offline (docs/results.md, "One GPU slot").
#   here, once:  bash .gpu/prepare.sh
#   there:       bash .gpu/slot.sh DEADLINE_SECONDS [more budget_runs jobs ...]
#                (carry .gpu/wheels and .gpu/data; results under $OUT, or ./slot_out without one)
# budget_runs sizes each job's epochs to the deadline (the release's 200 at most) and compresses the cosine
# schedule into them; every job tests its best checkpoint before the deadline. The slot keeps to the image's
# own torch and transformers and installs only the carried wheels: nothing here reaches the network.
set -euo pipefail
cd "$(dirname "$0")/.."
deadline=${1:?usage: bash .gpu/slot.sh DEADLINE_SECONDS [more jobs]}
shift
out=${OUT:-slot_out}
for need in .gpu/wheels .gpu/data/Beauty/Beauty.inter .gpu/data/Instruments/raw/Instruments.index.json; do
    [ -e "$need" ] || { echo "error: $need is missing: run bash .gpu/prepare.sh here, then carry .gpu/wheels and .gpu/data" >&2; exit 2; }
done
python3 -m pip install --quiet --no-index --no-deps .gpu/wheels/*.whl
python3 -c "import recbole_letter, torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
G="data_path=.gpu/data,enable_amp=True,eval_step=2,beam_batch_size=512,show_progress=False"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # the T5 jobs are launch-bound: host threads matter, a few each
mkdir -p "$out"
status=0
python3 benchmarks/budget_runs.py --deadline="$deadline" --out=slot_runs \
    "lt_beauty:LETTER_TIGER:Beauty:item_codes_file=artifacts/Beauty.letter.index.json,$G" \
    "tiger_beauty:TIGER:Beauty:item_codes_file=artifacts/Beauty.rqvae.index.json,$G" \
    "lt_instr:LETTER_TIGER:Instruments:item_codes_file=.gpu/data/Instruments/raw/Instruments.index.json,$G" \
    "$@" 2>&1 | tee "$out/slot.log" || status=$?
# what comes back: the table (slot.log), each job's result and log, and the learning curves (no checkpoints)
tar -czf "$out/slot_runs.tgz" slot_runs/*.json slot_runs/*.log slot_runs/*/saved/*.curve.* 2>/dev/null || true
exit "$status"
