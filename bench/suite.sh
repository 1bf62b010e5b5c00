#!/usr/bin/env bash
# Issue 13's benchmark matrix in priority order, each benchmark under its own time limit, results as they finish.
#
#   bench/suite.sh OUT_DIR            (environment: PY, JOBS, THREADS, DEVICE, PRESET, DATA_SEEDS, SEEDS, ROUNDS,
#                                      EPOCHS, WORK, TEXT_MODEL, BUDGET_S, WAIT_FOR, QUICK=1 for a dry run)
#
# Runs, in order: federations generated and text-embedded once per data seed (so parallel workers only read
# caches); B4 federation value (centralized / local / federated, OmniFuse and concat, EHR-only); B2 as the
# paper's Table 4 centralized, then federated; B1 OmniFuse vs hide-for-prediction vs ModDrop at the matched rate;
# B2b imputation-loss reduction; B3 missing-rate sweep (0, 0.5, 0.9). Each step gets what is left of BUDGET_S
# (seconds); a step cut off by it leaves no result file and the log says so. Used on a lent 16-core GPU machine
# (BENCHMARKS.md records the exact call); on this project's 2-core CPU, use QUICK=1 or expect hours.
set -uo pipefail
OUT=${1:?usage: bench/suite.sh OUT_DIR}
mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}; JOBS=${JOBS:-2}; THREADS=${THREADS:-1}; DEVICE=${DEVICE:-auto}
PRESET=${PRESET:-reliability}; DATA_SEEDS=${DATA_SEEDS:-3}; SEEDS=${SEEDS:-3}; ROUNDS=${ROUNDS:-3}
EPOCHS=${EPOCHS:-1}; WORK=${WORK:-bench/work}; BUDGET_S=${BUDGET_S:-3600}
START=$(date +%s)
SET=()
[ -n "${TEXT_MODEL:-}" ] && SET+=(--set "text-model-path=$TEXT_MODEL")
COMMON=(--preset "$PRESET" --data-seeds "$DATA_SEEDS" --seeds "$SEEDS" --rounds "$ROUNDS" --local-epochs "$EPOCHS"
        --jobs "$JOBS" --threads "$THREADS" --device "$DEVICE" --work "$WORK" "${SET[@]}")
if [ "${QUICK:-0}" = 1 ]; then COMMON+=(--config smoke); fi

step() {  # step NAME SCRIPT ARGS...: run under the remaining budget, log to OUT/NAME.log, result OUT/NAME.json
  local name=$1 script=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if [ "$left" -le 20 ]; then echo "SKIPPED $name (budget spent)" | tee -a "$OUT/suite.log"; return; fi
  local t0=$(date +%s)
  timeout "$left" "$PY" "$script" "${COMMON[@]}" --out "$OUT/$name.json" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/suite.log"
}

# 1. data: generate and embed once per data seed, in parallel
t0=$(date +%s)
for ((s = 0; s < DATA_SEEDS; s++)); do
  "$PY" - "$PRESET" "$s" "$WORK" "${TEXT_MODEL:-}" "${QUICK:-0}" <<'EOF' > "$OUT/prep-$s.log" 2>&1 &
import sys
from pathlib import Path
sys.path.insert(0, ".")
from bench.common import federation, load_all
from omnifuse_core.config import Config
preset, seed, work, text, quick = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5] == "1"
cfg = Config.load("smoke" if quick else "demo")
if text:
    cfg = cfg.replace(text_model_path=text)
load_all(federation(preset, None, seed, work), cfg)
EOF
done
wait
echo "prep seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/suite.log"
# WAIT_FOR=FILE: start training only once FILE exists (lets a timing run finish on an otherwise idle device)
if [ -n "${WAIT_FOR:-}" ]; then while [ ! -e "$WAIT_FOR" ]; do sleep 2; done; fi
START=$(date +%s)  # the budget covers the benchmarks, not the data preparation or the wait

step b4_federation_value bench/federation_value.py
step b2_table4_centralized bench/ablation.py
step b2_table4_federated bench/ablation.py --federated
step b1_hiding bench/fusion_comparison.py --fusions concat,omnifuse,omnifuse_hfp,moddrop_matched --subsets all
step b2b_reduction bench/ablation.py --style reduction
step b3_missing bench/missing_sweep.py --rates 0,0.5,0.9
echo "total seconds=$(( $(date +%s) - START ))" | tee -a "$OUT/suite.log"
