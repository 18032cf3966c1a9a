#!/usr/bin/env bash
# RecBole baselines on the Amazon 2014 5-core files (the TIGER protocol), one after another.
# Usage: [SRC=folder of the S3-Rec files] [DATASETS="Beauty Toys"] [MODELS="Pop SASRec GRU4Rec BERT4Rec"] [EPOCHS=50] bash benchmarks/baselines.sh [--key=value overrides for every run]
# Each run logs under log/ and writes its result JSON under saved/ (see run.py --help);
# `python benchmarks/collect_results.py` tabulates them. On a 2-core machine, two copies may run
# side by side (one per dataset) only with OMP_NUM_THREADS=1 each (see docs/results.md, Speed).
set -uo pipefail
cd "$(dirname "$0")/.."
DATASETS=${DATASETS:-Beauty Toys}
MODELS=${MODELS:-Pop SASRec GRU4Rec BERT4Rec}
EPOCHS=${EPOCHS:-50}  # the cap; early stopping (5 epochs without a better valid NDCG@10) usually ends sooner
# Convert the datasets not converted yet (from $SRC, the converter's default if unset); stop if that fails.
missing=()
for dataset in $DATASETS; do [ -f "dataset/$dataset/$dataset.inter" ] || missing+=("$dataset"); done
if [ ${#missing[@]} -gt 0 ]; then
  python -m recbole_onevision.preprocess.convert s3rec ${SRC:+--src "$SRC"} --datasets "${missing[@]}" || exit 1
fi
COMMON=(--show_progress=False --MAX_ITEM_LIST_LENGTH=20 --epochs=$EPOCHS --stopping_step=5 "$@")
# Cheapest and most-compared first, so a run cut short still has the key rows.
for model in $MODELS; do
  for dataset in $DATASETS; do
    python run.py --model="$model" --dataset="$dataset" "${COMMON[@]}"
  done
done
