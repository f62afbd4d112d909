#!/usr/bin/env bash
# One prepared run of every benchmark and the serving-ratio table on a CUDA machine (< 8 minutes on one GPU).
#
# Usage: bench/gpu/run.sh RESULTS_DIR [--device cuda|cpu] [--wheels DIR] [--quick]
#   RESULTS_DIR  everything is written here: machine.txt, run.log, benchmarks.json, ratios-*.json, summary.md
#   --device     cuda (default) or cpu (to test this script on a machine without a GPU)
#   --wheels     folder from `invoke bench.wheels` (bench/gpu/wheels.txt lists them exactly); unpacked into a
#                temporary folder put first on PYTHONPATH. bin/vegeta in it, if present, drives the load.
#   --quick      a smaller matrix (CI / CPU check: seconds per stage, not minutes)
#   PERF_ANALYZER (env) or --wheels DIR with bin/perf_analyzer: also drive the service with Triton's perf_analyzer
#                beside vegeta (clients.md); skipped, saying so, without one
#
# Needs on the machine: python3 with torch, torchvision, pillow, httpx, prometheus-client, pytest-benchmark.
# Everything else comes from --wheels. No network: the service fetches nothing, the load is on 127.0.0.1.
set -euo pipefail

usage() { sed -n '2,12p' "$0" >&2; exit 2; }
[[ $# -ge 1 ]] || usage
RESULTS=$1; shift
DEVICE=cuda WHEELS="" QUICK=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) usage ;;
  esac
done
[[ $DEVICE == cuda || $DEVICE == cpu ]] || usage

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-python3}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
exec > >(tee "$RESULTS/run.log") 2>&1
cd "$REPO"
START=$SECONDS
stage() { echo; echo "=== [$((SECONDS - START))s] $*"; }

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
for name in ("fastapi", "uvicorn", "pydantic", "pydantic_settings", "safetensors", "httpx", "torchvision", "pytest_benchmark"):
    module = importlib.import_module(name)
    print(f"{name} {getattr(module, '__version__', '?')} from {module.__file__}")
PY
} | tee "$RESULTS/machine.txt"
if [[ $DEVICE == cuda ]]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'CUDA requested but torch sees no GPU')"
fi

stage "bundles"
if [[ $QUICK == 1 ]]; then  # the quick matrix uses the demo model only
  "$PYTHON" -c "from ops.perf.benchmodels import ensure_demo_bundle; print(ensure_demo_bundle())"
else
  "$PYTHON" -c "from ops.perf.benchmodels import ensure_demo_bundle, ensure_resnet50_bundle; print(ensure_demo_bundle()); print(ensure_resnet50_bundle())"
fi

if [[ $QUICK == 1 ]]; then
  BENCH_ARGS=(--bench-models=demo --bench-batches=1,4 --benchmark-max-time=0.05 --benchmark-min-rounds=1
    --bench-http-batching=off)
  RATIO_ARGS=(--models demo --batch-size 4 --concurrency 1,4 --level-duration 1 --overhead-requests 10)
elif [[ $DEVICE == cuda ]]; then
  BENCH_ARGS=(--bench-models=resnet50,demo --benchmark-max-time=0.3 --benchmark-min-rounds=5)
  RATIO_ARGS=(--models demo,resnet50 --batch-size 64 --concurrency 1,8,32,64,128,256 --level-duration 4)
else
  BENCH_ARGS=(--bench-models=resnet50,demo --benchmark-max-time=0.5 --benchmark-min-rounds=3)
  RATIO_ARGS=(--models demo)  # the defaults of ops/perf/bench.py: batch 16, clients 1,4,16,32, 3 s levels
fi

stage "pytest-benchmark ($DEVICE)"
BENCH_CMD=("$PYTHON" -m pytest bench -q -p no:cacheprovider "--rootdir=$REPO" "--bench-device=$DEVICE"
  "--benchmark-json=$RESULTS/benchmarks.json" --benchmark-columns=median,iqr,ops,rounds --benchmark-sort=name
  "--benchmark-storage=file://$RESULTS/saved" --benchmark-autosave "${BENCH_ARGS[@]}")
echo "+ ${BENCH_CMD[*]}"
"${BENCH_CMD[@]}"

stage "serving ratios ($DEVICE)"
RATIO_CMD=("$PYTHON" -m ops.perf.ratios "$RESULTS" --device "$DEVICE" "${RATIO_ARGS[@]}")
echo "+ ${RATIO_CMD[*]}"
"${RATIO_CMD[@]}"
if [[ $DEVICE == cuda && $QUICK == 0 ]]; then
  "${RATIO_CMD[@]}" --precision fp16 --models resnet50
fi

stage "perf_analyzer beside vegeta ($DEVICE)"
if [[ -n ${PERF_ANALYZER:-} ]]; then
  if [[ $QUICK == 1 ]]; then CLIENT_ARGS=(--concurrency 1,4 --level-duration 1.5 --batch-size 4)
  elif [[ $DEVICE == cuda ]]; then CLIENT_ARGS=(--concurrency 1,8,32,64 --level-duration 3 --batch-size 64)
  else CLIENT_ARGS=(); fi
  CLIENTS_CMD=("$PYTHON" -m ops.perf.clients "$RESULTS" --device "$DEVICE" "${CLIENT_ARGS[@]}")
  echo "+ ${CLIENTS_CMD[*]}"
  "${CLIENTS_CMD[@]}" || echo "perf_analyzer stage failed (above); the other results stand"
else
  echo "skipped: no PERF_ANALYZER (a perf_analyzer binary: PyPI perf-analyzer, or \$WHEELS/bin/perf_analyzer)"
fi

stage "summary"
"$PYTHON" -m ops.perf.report "$RESULTS" --title "Benchmark summary ($DEVICE, bench/gpu/run.sh)" \
  --command "${BENCH_CMD[*]}" --command "${RATIO_CMD[*]}"
stage "done in $((SECONDS - START))s: $RESULTS/summary.md"
