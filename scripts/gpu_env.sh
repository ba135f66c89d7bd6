# Sourced by the GPU scripts (bench_gpu.sh, gpu_experiments.sh): gptlab's src/ on the path, and on an
# offline GPU machine the packages and data that `make gpu-carry` put in .gpucarry/.
#   gpu_env_check "<python modules>" "<how to get them>"  exits 2 with one line when one is missing
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .gpucarry ]; then
  export PYTHONPATH="$PWD/.gpucarry/site:$PYTHONPATH"
  export GPTLAB_DATA_MIRROR="$PWD/.gpucarry/data" TIKTOKEN_CACHE_DIR="$PWD/.gpucarry/tiktoken_cache"
fi
gpu_env_check() {
  if ! $PY -c "import $1" 2>/dev/null; then
    echo "error: a package is missing ($PY): $2" >&2
    exit 2
  fi
}
