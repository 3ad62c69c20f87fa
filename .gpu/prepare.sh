#!/usr/bin/env bash
# Run here, in the project's venv (it reads the installed pandas version), with the package registry
# reachable, once before a GPU slot: puts what the GPU machine
# lacks and cannot download into two ignored folders that the slot's call carries (.gpu/slot.sh).
#   .gpu/wheels: recbole 1.2.1 and its two pure-Python requirements the CUDA image does not hold, and the
#                pandas of requirements.txt (the image's newer pandas fails in RecBole's remapping of the
#                token_seq columns of Beauty's item file) with the two pure-Python packages it needs
#   .gpu/data:   Beauty/ and Instruments/ of ../shared/data (the atomic files and LETTER's released codes)
set -euo pipefail
cd "$(dirname "$0")/.."
data=${1:-../shared/data}
mkdir -p .gpu/wheels .gpu/data
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --dest .gpu/wheels \
    recbole==1.2.1 colorlog==4.7.2 texttable==1.7.2
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
    --platform manylinux2014_x86_64 --dest .gpu/wheels "pandas==$(python3 -c 'import pandas; print(pandas.__version__)')"
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --dest .gpu/wheels pytz tzdata
for name in Beauty Instruments; do
    [ -d "$data/$name" ] || { echo "error: $data/$name not found (give the data folder as the first argument)" >&2; exit 2; }
    mkdir -p ".gpu/data/$name"
    cp -r "$data/$name/." ".gpu/data/$name/"
done
du -sh .gpu/wheels .gpu/data
echo "carry .gpu/wheels and .gpu/data with the slot's call: bash .gpu/slot.sh DEADLINE_SECONDS"
