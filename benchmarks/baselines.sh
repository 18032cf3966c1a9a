#!/usr/bin/env bash
# RecBole baselines on the Amazon 2014 5-core files (the TIGER protocol), one after another.
# Usage: bash benchmarks/baselines.sh [extra --key=value overrides for every run]
# Each run logs under log/ and writes its result JSON under saved/ (see run.py --help).
set -uo pipefail
cd "$(dirname "$0")/.."
python -m recbole_onevision.data.convert s3rec --datasets Beauty Toys
COMMON=(--show_progress=False --MAX_ITEM_LIST_LENGTH=20 --epochs=50 --stopping_step=5 "$@")
# Cheapest and most-compared first, so a run cut short still has the key rows.
for run in Pop:Beauty Pop:Toys SASRec:Beauty GRU4Rec:Beauty SASRec:Toys GRU4Rec:Toys \
           BERT4Rec:Beauty BERT4Rec:Toys; do
  python run.py --model="${run%%:*}" --dataset="${run##*:}" "${COMMON[@]}"
done
