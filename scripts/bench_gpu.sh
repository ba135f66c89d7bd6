#!/usr/bin/env bash
# The GPU measurements of README's "Performance" section, in one prepared run (`make bench-gpu`):
#   baby   the baby GPT's full 5000-iteration run, bf16 + compile: wall time, best val loss
#          (nanoGPT reports 1.4697 in about 3 minutes on one A100)
#   gpt2   GPT-2 124M, gptlab vs the plain loop: tokens/s and MFU, bf16 + compile, vocab 50,304
#   costs  the single costs on the GPU: pinned copies, fused AdamW, TF32, flash attention, compile, pad_vocab
#   fsdp   trainer=fsdp on one GPU, a short run: the strategy starts, trains and writes a checkpoint
#   modern the baby GPT with every switch of docs/modern.md on (variant=modern_all) against the GPT-2
#          recipe, 1500 steps each, and modern_all at 1000: seconds of training (evaluations
#          included) until val loss <= 1.47 (docs/modern.md's GPU target: within 30 s). About 4 minutes.
#   profile the baby GPT's step through gptlab and through the plain loop under torch.profiler
#          (scripts/profile_step.py): wall vs GPU-busy ms per step, host syncs per step, top kernels.
#          About 2 minutes.
#   modes  compile_mode: the baby GPT's step with reduce-overhead (CUDA graphs) and with
#          max-autotune-no-cudagraphs against the default mode, turn about. About 4 minutes.
#   gpt2mfu GPT-2 124M's levers toward 50% MFU, each against the preset turn about: micro-batch
#          32 x 2 accumulation instead of 16 x 4 (same tokens per step), and
#          compile_mode=max-autotune-no-cudagraphs. About 6 minutes.
#   nanogpt the baby GPT's step, gptlab / plain loop / nanoGPT's train.py taking turns of 50 steps
#          (needs nanoGPT's code: GPTLAB_NANOGPT_DIR, which make gpu-carry sets up). About 4 minutes.
#   whole  the default run (baby GPT, 5000 steps, 21 evaluations), gptlab's command against
#          nanoGPT's start to finish, one pair. About 6 minutes.
# STAGES picks (default "baby gpt2", about 6 minutes on an H200 with a warm machine; all four about 10).
#
#   bash scripts/bench_gpu.sh [RESULT_DIR]      (RESULT_DIR default: $OUT, else outputs/bench_gpu)
#
# An offline machine that has torch, lightning, tensorboard and tiktoken but not hydra-core and
# omegaconf: run `make gpu-carry` on a machine with them first; it fills .gpucarry/ (ignored by
# git, ~5 MB: those packages' Python files, Tiny Shakespeare, GPT-2's BPE files), which this
# script puts on the path. With the device tool: run(command="bash scripts/bench_gpu.sh",
# carry=[".gpucarry"], timeout_s=600). At most 8 small files land in RESULT_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULT=${1:-${OUT:-outputs/bench_gpu}}
STAGES=${STAGES:-"baby gpt2"}
PY=${PYTHON:-python3}
EXTRA=${EXTRA:-}  # overrides added to every run, e.g. for a quick check of this script on a CPU
WORK=${WORK:-/tmp/gptlab_bench_gpu}  # run folders (checkpoints): not copied back
mkdir -p "$RESULT" "$WORK"
source scripts/gpu_env.sh
gpu_env_check "torch, lightning, hydra, omegaconf, tiktoken, tensorboard" "run 'make gpu-carry' where hydra-core and omegaconf are installed, and carry .gpucarry"
LOG="$RESULT/bench_gpu.log"
: >"$LOG"
say() { echo "$*" | tee -a "$LOG"; }
say "bench_gpu $(date -u +%Y-%m-%dT%H:%MZ) stages: $STAGES"
gpu_env_describe | tee -a "$LOG"
$PY -m gptlab.prepare data=shakespeare_char data.root="$WORK/data" >>"$LOG"
$PY -m gptlab.prepare data=shakespeare data.root="$WORK/data" >>"$LOG"

for stage in $STAGES; do
  t0=$(date +%s)
  case $stage in
    baby)
      # the default config is the baby GPT on a GPU; everything from the command to the last checkpoint is timed
      $PY -m gptlab.train compile=true data.root="$WORK/data" out_dir="$WORK/baby" overwrite=true sample_tokens=200 $EXTRA 2>&1 | tee -a "$LOG"
      cp "$WORK/baby/metrics.json" "$RESULT/baby_metrics.json"
      cp "$WORK/baby/training.log" "$RESULT/baby_training.log"
      say "baby: $(( $(date +%s) - t0 )) s for the whole command; $($PY -c "import json; m = json.load(open('$RESULT/baby_metrics.json')); print(f\"train() {m['wall_time_s']} s, best val loss {m['best_val_loss']:.4f} at step {m['best_step']}, {m['tokens_per_s']:,.0f} tok/s\")")"
      ;;
    gpt2)
      # turns of 10 steps: each turn ends with a CUDA sync, which would cost a little on every step
      $PY -m gptlab.bench --configs gpt2 --rounds 2 --chunk 10 --intervals none --no-data --json "$RESULT/gpt2.json" data.root="$WORK/data" $EXTRA 2>&1 | tee -a "$LOG"
      ;;
    costs)
      $PY -m gptlab.bench --costs --rounds 3 --json "$RESULT/costs.json" data.root="$WORK/data" $EXTRA 2>&1 | tee -a "$LOG"
      ;;
    fsdp)
      $PY -m gptlab.train trainer=fsdp trainer.devices=1 model=small max_iters=100 eval_interval=50 eval_iters=20 \
        data.root="$WORK/data" out_dir="$WORK/fsdp" overwrite=true sample_tokens=100 $EXTRA 2>&1 | tee -a "$LOG"
      $PY -c "from gptlab.training.checkpoint import load_model; m, i = load_model('$WORK/fsdp/last.ckpt'); print('fsdp checkpoint loads: step', i['step'], m.num_params(), 'parameters')" 2>&1 | tee -a "$LOG"
      ;;
    modern)
      # the same model, data and steps; evaluations every 100 steps (50 batches) find the crossing
      for run in "gpt2_recipe 1500" "modern_all 1500" "modern_all 1000"; do
        set -- $run
        $PY -m gptlab.train variant=$1 compile=true max_iters=$2 eval_interval=100 eval_iters=50 sample_tokens=0 \
          data.root="$WORK/data" out_dir="$WORK/modern_$1_$2" overwrite=true $EXTRA 2>&1 | tail -n 4 | tee -a "$LOG"
        cp "$WORK/modern_$1_$2/metrics.json" "$RESULT/modern_$1_$2.json"
        say "modern $1 $2 steps: $($PY scripts/time_to_loss.py "$RESULT/modern_$1_$2.json" 1.47)"
      done
      ;;
    profile)
      for side in gptlab plain; do
        $PY scripts/profile_step.py --side $side --out "$RESULT" --warmup 30 --steps 20 compile=true data.root="$WORK/data" $EXTRA 2>&1 | tail -n 40 | tee -a "$LOG"
      done
      ;;
    modes)
      for mode in reduce-overhead max-autotune-no-cudagraphs; do
        $PY -m gptlab.bench --configs baby --rounds 1 --steps 30,300 --chunk 30 --intervals none --no-data \
          --sides "gptlab" "gptlab compile_mode=$mode" --json "$RESULT/modes_$mode.json" compile=true data.root="$WORK/data" $EXTRA 2>&1 | tail -n 8 | tee -a "$LOG"
      done
      ;;
    gpt2mfu)
      for other in "batch_size=32 gradient_accumulation_steps=2" "compile_mode=max-autotune-no-cudagraphs"; do
        tag=$(echo "$other" | tr ' =' '_-')
        $PY -m gptlab.bench --configs gpt2 --rounds 1 --chunk 10 --intervals none --no-data \
          --sides "gptlab" "gptlab $other" --json "$RESULT/gpt2mfu_$tag.json" data.root="$WORK/data" $EXTRA 2>&1 | tail -n 8 | tee -a "$LOG"
      done
      ;;
    nanogpt)
      $PY -m gptlab.bench --configs baby --rounds 1 --steps 50,250 --chunk 50 --intervals none --no-data \
        --nanogpt "${GPTLAB_NANOGPT_DIR:?run make gpu-carry next to a nanoGPT copy}" --json "$RESULT/nanogpt.json" \
        compile=true data.root="$WORK/data" $EXTRA 2>&1 | tail -n 14 | tee -a "$LOG"
      ;;
    whole)
      $PY -m gptlab.bench --whole --rounds 1 --nanogpt "${GPTLAB_NANOGPT_DIR:?run make gpu-carry next to a nanoGPT copy}" \
        --json "$RESULT/whole.json" profile=none compile=true data.root="$WORK/data" $EXTRA 2>&1 | tail -n 10 | tee -a "$LOG"
      ;;
    *) say "unknown stage '$stage' (baby, gpt2, costs, fsdp, modern, profile, modes, gpt2mfu, nanogpt, whole)"; exit 2 ;;
  esac
  say "== stage $stage: $(( $(date +%s) - t0 )) s"
done
