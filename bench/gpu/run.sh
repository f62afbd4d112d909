#!/usr/bin/env bash
# One prepared run of the GPU benchmarks, the serving-ratio table and the servers side by side (< 8 minutes).
#
# Usage: bench/gpu/run.sh RESULTS_DIR [--device cuda|cpu] [--wheels DIR] [--quick] [--pin SVC:CLIENT] [--perf-analyzer]
#   RESULTS_DIR  everything is written here: machine.txt, run.log, benchmarks.json, ratios-*.json, peers*.json,
#                peers*.svg, summary.md
#   --device     cuda (default) or cpu (to test this script on a machine without a GPU)
#   --wheels     folder from `invoke bench.wheels` (bench/gpu/wheels.txt lists them exactly); unpacked into a
#                temporary folder put first on PYTHONPATH. bin/vegeta in it, if present, drives the load.
#   --quick      a smaller matrix (CI / CPU check: seconds per stage, not minutes)
#   --pin        CPUs of the servers and of the vegeta client for the side-by-side runs (default: the client on
#                the last quarter of the CPUs, at most 4, the servers on the rest; 2 CPUs: server 1, client 0)
#   --perf-analyzer  also drive the service with Triton's perf_analyzer beside vegeta (PERF_ANALYZER, or
#                bin/perf_analyzer in the wheel folder); off by default: it does not fit the 8-minute budget
#
# Needs on the machine: python3 with torch, torchvision, pillow, httpx, prometheus-client, pytest-benchmark.
# Everything else comes from --wheels. No network: the service fetches nothing, the load is on 127.0.0.1.
#
# Budget on one H200 (16 CPUs), seconds, from the 2026-11-30 run's stage times (427 s for a larger matrix):
#   wheels + machine + bundles    60   (resnet50 bundle built here: about 30)
#   pytest-benchmark              40   resnet50 fp16 channels_last model-only, batches 1-256; preprocess photo/large
#   serving ratios                80   resnet50 fp16 channels_last batch 64, photo body; batching on and off
#   side by side, photo body     170   ours, ours-split-cpu, ours-split-gpu, litserve (pytriton if installed):
#                                      each about 15 to start and 5 levels of 2.5 s
#   side by side, large body      75   ours, ours-split-cpu, ours-split-gpu: 3 levels of 2 s
#   summary                        5
#   total                        430   (each stage also has a hard timeout below, and none runs past 450 s, so a
#                                      hung server costs at most its stage and the script ends inside 8 minutes)
set -euo pipefail

usage() { sed -n '2,16p' "$0" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
RESULTS=$1; shift
DEVICE=cuda WHEELS="" QUICK=0 PIN="" PERF_ANALYZER_STAGE=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --pin) PIN=$2; shift 2 ;;
    --perf-analyzer) PERF_ANALYZER_STAGE=1; shift ;;
    *) usage ;;
  esac
done
[[ $DEVICE == cuda || $DEVICE == cpu ]] || usage
SCALE=1
[[ $DEVICE == cuda && $QUICK == 0 ]] || SCALE=5

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
exec > >(tee "$RESULTS/run.log") 2>&1
cd "$REPO"
START=$SECONDS
stage() { echo; echo "=== [$((SECONDS - START))s] $*"; }
# A stage that must not take the run past its budget: `bounded SECONDS cmd...`; a stage that fails or runs out of
# time is reported and the run goes on (what it wrote so far stays: the side-by-side runs write after each server).
# The limits are the GPU budget's; elsewhere (a CPU check on a busy laptop) they are five times as long. On the
# GPU no stage may run past DEADLINE either (450 s from the start; a stopped stage then has 20 s to stop its
# servers, and the summary takes a few): 8 minutes in all.
FAILED=()
DEADLINE=450
bounded() {
  local limit=$(( $1 * SCALE )); shift
  local left=$(( DEADLINE - (SECONDS - START) ))
  if [[ $SCALE == 1 ]] && (( left < limit )); then limit=$(( left > 5 ? left : 5 )); fi
  echo "+ $*"
  local code=0
  timeout --kill-after=20 "$limit" "$@" || code=$?  # SIGTERM: the runner stops its servers
  if [[ $code -ne 0 ]]; then
    echo "!!! stage failed with exit code $code$([[ $code -eq 124 ]] && echo " (ran past its ${limit} s)")"
    FAILED+=("$*: exit $code")
  fi
}

export PYTHONPATH="$REPO/services:$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [[ -n $WHEELS ]]; then
  stage "installing wheels from $WHEELS"
  SITE=$(mktemp -d "${TMPDIR:-/tmp}/eks-bench-site.XXXXXX")
  trap 'rm -rf "$SITE"' EXIT
  "$PYTHON" bench/gpu/install_wheels.py "$WHEELS" "$SITE" --requirements bench/gpu/wheels.txt
  export PYTHONPATH="$SITE:$PYTHONPATH"
  [[ -x $WHEELS/bin/vegeta ]] && export VEGETA="$WHEELS/bin/vegeta"
  [[ -z ${PERF_ANALYZER:-} && -x $WHEELS/bin/perf_analyzer ]] && export PERF_ANALYZER="$WHEELS/bin/perf_analyzer"
fi
export PYTHONDONTWRITEBYTECODE=1

stage "machine"
{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -srm)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs) x $(nproc)"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader || true
  fi
  "$PYTHON" - <<'PY'
import importlib, torch
print(f"torch {torch.__version__} cuda {torch.version.cuda} available {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"gpu {p.name} sm_{p.major}{p.minor} {p.total_memory / 2**30:.1f} GiB; arch list {torch.cuda.get_arch_list()}")
names = ("fastapi", "uvicorn", "httptools", "uvloop", "pydantic", "pydantic_settings", "safetensors", "httpx",
         "torchvision", "pytest_benchmark", "litserve", "pytriton", "pynvml")
for name in names:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        print(f"{name} not importable: {exc}")
        continue
    print(f"{name} {getattr(module, '__version__', '?')} from {module.__file__}")
from image_classifier.settings import Settings
wanted = ("split", "fronts", "cuda_graphs", "gpu_decode")
known = ", ".join(f"{n}={'known' if n in Settings.model_fields else 'unknown'}" for n in wanted)
print(f"service settings of issue 22: {known}")
PY
} | tee "$RESULTS/machine.txt"
if [[ $DEVICE == cuda ]]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'CUDA requested but torch sees no GPU')"
fi

stage "bundles"
if [[ $QUICK == 1 || $DEVICE == cpu ]]; then MODEL=demo; else MODEL=resnet50; fi
"$PYTHON" -c "from ops.perf.benchmodels import bundle_for; print(bundle_for('$MODEL'))"

# The servers' CPUs and the client's: vegeta needs about one CPU per 1,500-2,000 requests/s on loopback.
if [[ -z $PIN ]]; then
  CPUS=$(nproc)
  if (( CPUS >= 8 )); then
    CLIENT=$(( CPUS / 4 < 4 ? CPUS / 4 : 4 ))
    PIN="0-$(( CPUS - CLIENT - 1 )):$(( CPUS - CLIENT ))-$(( CPUS - 1 ))"
  else
    PIN=auto
  fi
fi

if [[ $QUICK == 1 ]]; then
  BENCH_ARGS=(--bench-models=demo --bench-batches=1,4 --benchmark-max-time=0.05 --benchmark-min-rounds=1)
  RATIO_ARGS=(--models demo --batch-size 4 --concurrency 1,4 --level-duration 1 --overhead-requests 10)
  SIDE_ARGS=(--model demo --batch-size 4 --concurrency 1,4 --level-duration 1)
  LARGE_ARGS=(--model demo --batch-size 4 --concurrency 1 --level-duration 1)
elif [[ $DEVICE == cuda ]]; then
  BENCH_ARGS=(--bench-models=resnet50 --bench-precisions=fp16 --bench-layouts=channels_last
    --benchmark-max-time=0.2 --benchmark-min-rounds=5)
  RATIO_ARGS=(--models resnet50 --precision fp16 --channels-last --batch-size 64 --concurrency 1,32,128,256
    --level-duration 2.5)
  SIDE_ARGS=(--model resnet50 --precision fp16 --channels-last --batch-size 64 --concurrency 1,32,128,256,512
    --level-duration 2.5)
  LARGE_ARGS=(--model resnet50 --precision fp16 --channels-last --batch-size 64 --concurrency 1,16,64
    --level-duration 2)
else
  BENCH_ARGS=(--bench-models=resnet50,demo --benchmark-max-time=0.5 --benchmark-min-rounds=3)
  RATIO_ARGS=(--models demo)  # the defaults of ops/perf/defaults.py: batch 16, clients 1,4,16,32, 3 s levels
  SIDE_ARGS=(--model demo --concurrency 1,4,16,32)
  LARGE_ARGS=(--model demo --concurrency 1,4 --level-duration 2)
fi

stage "GPU-only tests ($DEVICE)"
# CUDA graphs against eager, nvJPEG against Pillow, the GPU service: they skip without CUDA and really run here.
bounded 75 "$PYTHON" -m pytest tests/services/test_cuda_graphs.py tests/services/test_gpu_decode.py \
  tests/services/test_gpu.py -q -p no:cacheprovider "--rootdir=$REPO" -o "addopts=--import-mode=importlib" \
  -rs "--junitxml=$RESULTS/gpu-tests.xml"

stage "pytest-benchmark ($DEVICE)"
# Model-only and preprocessing; the end-to-end HTTP cases are measured by the stages below.
BENCH_CMD=("$PYTHON" -m pytest bench/test_model.py bench/test_preprocess.py -q -p no:cacheprovider
  "--rootdir=$REPO" "--bench-device=$DEVICE" "--benchmark-json=$RESULTS/benchmarks.json"
  --benchmark-columns=median,iqr,ops,rounds --benchmark-sort=name "--benchmark-storage=file://$RESULTS/saved"
  --benchmark-autosave "${BENCH_ARGS[@]}")
bounded 90 "${BENCH_CMD[@]}"

stage "serving ratios ($DEVICE)"
RATIO_CMD=("$PYTHON" -m ops.perf.ratios "$RESULTS" --device "$DEVICE" "${RATIO_ARGS[@]}")
bounded 120 "${RATIO_CMD[@]}"

stage "side by side, photo body ($DEVICE, pinning $PIN)"
SERVERS=ours,ours-split-cpu,ours-split-gpu,litserve,pytriton
SIDE_CMD=("$PYTHON" -m ops.perf.peers "$RESULTS" --device "$DEVICE" --servers "$SERVERS" --pin "$PIN"
  --body photo "${SIDE_ARGS[@]}")
bounded 220 "${SIDE_CMD[@]}"

stage "side by side, large body ($DEVICE, pinning $PIN)"
LARGE_CMD=("$PYTHON" -m ops.perf.peers "$RESULTS" --device "$DEVICE" --servers ours,ours-split-cpu,ours-split-gpu
  --pin "$PIN" --body large "${LARGE_ARGS[@]}")
bounded 100 "${LARGE_CMD[@]}"

if [[ $PERF_ANALYZER_STAGE == 1 ]]; then
  stage "perf_analyzer beside vegeta ($DEVICE)"
  if [[ -n ${PERF_ANALYZER:-} ]]; then
    if [[ $QUICK == 1 ]]; then CLIENT_ARGS=(--concurrency 1,4 --level-duration 1.5 --batch-size 4)
    elif [[ $DEVICE == cuda ]]; then CLIENT_ARGS=(--concurrency 1,8,32,64 --level-duration 3 --batch-size 64)
    else CLIENT_ARGS=(); fi
    bounded 120 "$PYTHON" -m ops.perf.clients "$RESULTS" --device "$DEVICE" "${CLIENT_ARGS[@]}"
  else
    echo "skipped: no PERF_ANALYZER (a perf_analyzer binary: PyPI perf-analyzer, or \$WHEELS/bin/perf_analyzer)"
  fi
fi

stage "summary"
"$PYTHON" -m ops.perf.report "$RESULTS" --title "Benchmark summary ($DEVICE, bench/gpu/run.sh)" \
  --command "${BENCH_CMD[*]}" --command "${RATIO_CMD[*]}" --command "${SIDE_CMD[*]}" --command "${LARGE_CMD[*]}"
if [[ ${#FAILED[@]} -gt 0 ]]; then
  printf '!!! failed stage: %s\n' "${FAILED[@]}"
fi
stage "done in $((SECONDS - START))s: $RESULTS/summary.md"
[[ ${#FAILED[@]} -eq 0 ]]
