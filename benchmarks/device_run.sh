#!/bin/bash
# OneVision on MVShop large (1M items, a 5,000-user sample) on a lent GPU, as one command of the
# device tool (issue 38; the CPU figures and commands are in docs/results/scale.md).
#
# Here, once (the GPU image has torch but not RecBole and its small dependencies):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 -d .whl recbole==1.2.1 colorlog texttable thop
# There, with carry [".whl"]:  bash benchmarks/device_run.sh      (logs and results under $OUT)
# Environment: SCALE (large), USERS (5000), STAGES (SFT 1 epoch, DPO 1), BUDGET_S (the training's
# time cap, 420), TESTS (1: OneVision's tests on the GPU first). A CPU dry run of the script:
#   OUT=/tmp/dev SCALE=mini USERS=100 TESTS=0 bash benchmarks/device_run.sh
set -u -o pipefail
OUT=${OUT:-results/device}
SCALE=${SCALE:-large}
USERS=${USERS:-5000}
STAGES=${STAGES:-"{'sft': {'epochs': 1}, 'dpo': {'epochs': 1}}"}
BUDGET_S=${BUDGET_S:-420}
TESTS=${TESTS:-1}
mkdir -p "$OUT"
if ! python3 -c "import recbole" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "no RecBole and no wheels in .whl/ to install it from (see the header)"; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
step() { echo "== $1 $(date -u +%T)" | tee -a "$OUT/steps.txt"; }

step machine
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  python3 -c "import torch, recbole; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'recbole', recbole.__version__)"
  nproc; git log --oneline -1 2>/dev/null; } > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

if [ "$TESTS" = 1 ]; then
    step tests
    timeout 150 python3 -m pytest -q -x -p no:cacheprovider tests/test_onevision.py > "$OUT/tests.log" 2>&1
    echo "tests exit $?"; tail -3 "$OUT/tests.log"
fi

NAME=mvshop-$SCALE-u$USERS
step "generate mvshop-$SCALE"
[ -f dataset/mvshop-$SCALE/mvshop-$SCALE.inter ] || python3 -m recbole_onevision.preprocess.mvshop --scale "$SCALE" \
    > "$OUT/generate.log" 2>&1 || { tail "$OUT/generate.log"; exit 1; }
step "sample $USERS users"
[ -f dataset/$NAME/$NAME.inter ] || python3 -m recbole_onevision.preprocess.sample_users --src dataset/mvshop-$SCALE \
    --users "$USERS" --name "$NAME" > "$OUT/sample.log" 2>&1 || { tail "$OUT/sample.log"; exit 1; }

step "train and evaluate OneVision (cap ${BUDGET_S} s)"
# peak GPU memory is read by a wrapper around run.py's entry point, after the run
timeout "$BUDGET_S" python3 - "$NAME" "$STAGES" > "$OUT/onevision.log" 2>&1 <<'EOF'
import sys, time, resource
import torch
from recbole_onevision.cli import main
name, stages = sys.argv[1:3]
start = time.time()
main(["--model=OneVision", f"--dataset={name}", "--show_progress=False",
      "--metrics=['Recall','NDCG','ProductHit','OrderNDCG']", f"--stages={stages}",
      "--loss_weights={'sid': 1.0, 'visual_prior': 0.0, 'order': 2.0}"])
gpu = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else 0.0
print(f"wall {time.time() - start:.0f} s, peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20:.1f} GB, "
      f"peak GPU memory allocated {gpu:.1f} GB")
EOF
echo "run exit $?"
grep -E "VRQ:|stage|epoch .* (training|evaluating)|^\| (split|valid|test) |^results|wall " "$OUT/onevision.log" | tail -30
step done
