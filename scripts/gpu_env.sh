# Sourced by the GPU scripts (bench_gpu.sh, gpu_experiments.sh): gptlab's src/ on the path, and on an
# offline GPU machine the packages and data that `make gpu-carry` put in .gpucarry/.
#   gpu_env_check "<python modules>" "<how to get them>"  exits 2 with one line when one is missing
#   gpu_env_describe  prints the GPU and the versions, for a result log
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .gpucarry ]; then
  export PYTHONPATH="$PWD/.gpucarry/site:$PYTHONPATH"
  export GPTLAB_DATA_MIRROR="$PWD/.gpucarry/data" TIKTOKEN_CACHE_DIR="$PWD/.gpucarry/tiktoken_cache"
  if [ -d .gpucarry/nanoGPT ]; then export GPTLAB_NANOGPT_DIR="$PWD/.gpucarry/nanoGPT"; fi
fi
gpu_env_check() {
  if ! $PY -c "import $1" 2>/dev/null; then
    echo "error: a package is missing ($PY): $2" >&2
    exit 2
  fi
}
# the machine a result came from: the GPU, then the torch / Lightning / CUDA versions
gpu_env_describe() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi'
  $PY -c 'import torch, lightning; print("torch", torch.__version__, "lightning", lightning.__version__, "cuda", torch.version.cuda)'
}
