#!/usr/bin/env bash
# The guide's five experiments at the guide's numbers on one GPU, in one prepared run: each
# experiment file as it is (profile=gpu, compile=true, dtype auto = bf16), an experiment's jobs
# side by side on the one GPU (hydra/launcher=joblib, n_jobs = its job count), then its report.
#   solo   the baby GPT alone, 300 steps: the tokens/s each side-by-side job is compared with
#   exp1   5 runs x 1000 steps (the guide's)        exp2  3 runs x 500 steps (the guide's; the 3rd is
#   exp3   4 runs x 2000 steps (guide: 5000, 0.4x)        64 x 1 in float32: the bf16 rounding floor)
#   exp4   4 runs x 1000 steps (guide: 2000, 0.5x)  exp5  4 sizes x 1000 steps (guide: 3000, 0.33x)
#   faq    the guide's FAQ claims, each model alone: compile=true against false (gptlab.bench, 300
#          timed steps), peak memory in float16 against float32 and tokens/s at batch 32, 64 and
#          128 (200-step runs)
# Shortened where the guide's numbers would not fit 8 minutes for exp1-exp5 together on one H200:
# an ESTIMATE (about 1.5 minutes of compiling and starting per experiment, jobs side by side at
# about half their solo speed); not yet run on a GPU. EXP3_ARGS, EXP4_ARGS, EXP5_ARGS replace the
# shortening (EXP3_ARGS= runs the guide's 5000 steps). faq adds about 3 minutes.
# STAGES picks (default "solo exp1 exp2 exp3 exp4 exp5"; the device tool allows 10 minutes a
# command: split it, e.g. STAGES="solo exp1 exp2 exp3" then STAGES="solo exp4 exp5 faq").
#
#   bash scripts/gpu_experiments.sh [RESULT_DIR]      (RESULT_DIR default: $OUT, else outputs/gpu_experiments)
#
# As scripts/bench_gpu.sh: an offline machine gets hydra-core, omegaconf, the joblib launcher and
# the data from .gpucarry/ (`make gpu-carry`; device tool: carry=[".gpucarry"]). EXTRA is added
# to every run, e.g. a quick check on a CPU:
#   EXTRA="profile=cpu device=cpu compile=false max_iters=20 eval_interval=10 eval_iters=2 warmup_iters=2" STAGES="solo exp2 exp5"
# RESULT_DIR gets small files only: gpu_experiments.log, speeds.md, <exp>_report.md and its figures, faq.json.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULT=${1:-${OUT:-outputs/gpu_experiments}}
STAGES=${STAGES:-"solo exp1 exp2 exp3 exp4 exp5"}
PY=${PYTHON:-python3}
EXTRA=${EXTRA:-}
EXP1_ARGS=${EXP1_ARGS-}
EXP2_ARGS=${EXP2_ARGS-}
EXP3_ARGS=${EXP3_ARGS-max_iters=2000}
EXP4_ARGS=${EXP4_ARGS-max_iters=1000}
EXP5_ARGS=${EXP5_ARGS-max_iters=1000}
WORK=${WORK:-/tmp/gptlab_gpu_experiments}  # run folders (checkpoints): not copied back
mkdir -p "$RESULT" "$WORK"
source scripts/gpu_env.sh
gpu_env_check "torch, lightning, hydra, omegaconf, tiktoken, tensorboard, hydra_plugins.hydra_joblib_launcher" "pip install 'gptlab[sweep]', or run 'make gpu-carry' where they are installed and carry .gpucarry"
LOG="$RESULT/gpu_experiments.log"
SPEEDS="$RESULT/speeds.md"
: >"$LOG"
: >"$SPEEDS"
say() { echo "$*" | tee -a "$LOG"; }
say "gpu_experiments $(date -u +%Y-%m-%dT%H:%MZ) stages: $STAGES; EXTRA: ${EXTRA:-none}"
gpu_env_describe | tee -a "$LOG"
$PY -m gptlab.prepare data=shakespeare_char data.root="$WORK/data" >>"$LOG"
$PY -m gptlab.prepare data=shakespeare_char_10pct data.root="$WORK/data" >>"$LOG" 2>&1 || true  # exp3's CPU data

COMMON="profile=gpu compile=true data.root=$WORK/data overwrite=true sample_tokens=0"
SOLO="$WORK/solo/metrics.json"

# one experiment: its jobs side by side, its report, each job's tokens/s against the solo run's
experiment() {
  local name=$1 jobs=$2
  shift 2
  rm -rf "${WORK:?}/$name"
  # a failed job fails the sweep (exit 1) but the report still says which: go on
  $PY -m gptlab.train experiment="$name" -m hydra/launcher=joblib hydra.launcher.n_jobs="$jobs" \
    $COMMON out_dir="$WORK/$name" "$@" $EXTRA >>"$LOG" 2>&1 || say "$name: the sweep exited with status $?"
  $PY -m gptlab.report "$WORK/$name" >/dev/null 2>>"$LOG" || say "$name: no report (status $?)"
  if [ -f "$WORK/$name/report.md" ]; then
    cp "$WORK/$name/report.md" "$RESULT/${name}_report.md"
    for png in "$WORK/$name"/*.png; do cp "$png" "$RESULT/${name}_$(basename "$png")"; done
    grep -m1 '^\*\*Verdict:\*\*' "$WORK/$name/report.md" | tee -a "$LOG"
  fi
  { echo "### $name (its jobs side by side, n_jobs=$jobs; solo: $([ -f "$SOLO" ] && echo the solo stage || echo not run))"; echo
    $PY scripts/job_speeds.py "$WORK/$name" $([ -f "$SOLO" ] && echo "$SOLO"); echo; } >>"$SPEEDS"
}

for stage in $STAGES; do
  t0=$(date +%s)
  case $stage in
    solo)
      $PY -m gptlab.train $COMMON max_iters=300 eval_interval=300 eval_iters=20 out_dir="$WORK/solo" $EXTRA >>"$LOG" 2>&1
      say "solo baby GPT: $($PY -c "import json; m = json.load(open('$SOLO')); print(f\"{m['tokens_per_s']:,.0f} tokens/s ({m['dtype']}), {m['wall_time_s']} s\")")"
      ;;
    exp1) experiment exp1_hparams 5 $EXP1_ARGS ;;
    exp2) experiment exp2_grad_accum 3 $EXP2_ARGS ;;
    exp3) experiment exp3_regularization 4 $EXP3_ARGS ;;
    exp4) experiment exp4_lr_schedule 4 $EXP4_ARGS ;;
    exp5) experiment exp5_scaling 4 $EXP5_ARGS ;;
    faq)
      # compile: the same model and steps, both sides alive, taking turns (gptlab.bench)
      $PY -m gptlab.bench --configs baby --sides "gptlab compile=false" "gptlab compile=true" --rounds 1 \
        --steps 50,300 --intervals none --no-data --json "$RESULT/faq_compile.json" data.root="$WORK/data" $EXTRA 2>&1 | tail -n 8 | tee -a "$LOG"
      for run in "dtype=float32 batch_size=64" "dtype=float16 batch_size=64" "dtype=bfloat16 batch_size=32" \
        "dtype=bfloat16 batch_size=64" "dtype=bfloat16 batch_size=128"; do
        tag=$(echo "$run" | tr ' =' '__')
        $PY -m gptlab.train $COMMON $run max_iters=200 eval_interval=200 eval_iters=10 out_dir="$WORK/faq_$tag" $EXTRA >>"$LOG" 2>&1
        say "faq $run: $($PY -c "import json; m = json.load(open('$WORK/faq_$tag/metrics.json')); print(f\"{m['tokens_per_s']:,.0f} tokens/s, peak {m['peak_memory_bytes'] / 1e9:.2f} GB ({m['peak_memory_kind']})\")")"
      done
      ;;
    *) say "unknown stage '$stage' (solo, exp1, exp2, exp3, exp4, exp5, faq)"; exit 2 ;;
  esac
  say "== stage $stage: $(( $(date +%s) - t0 )) s"
done
cat "$SPEEDS" >>"$LOG"
