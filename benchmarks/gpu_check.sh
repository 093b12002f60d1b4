#!/usr/bin/env bash
# One GPU check for a lent GPU machine (<= 8 minutes on one GPU): the GPU tests, then the learned-CV speed
# benchmark on CUDA (alanine dipeptide and chignolin in water: unbiased vs eABF along the loop's CV, CUDA graphs
# off/on, mixed precision), all into ONE results file.
#
#   bash benchmarks/gpu_check.sh                          # on the GPU machine: CUDA, full size
#   bash benchmarks/gpu_check.sh --platform CPU --quick   # anywhere: proves the script runs (CI does this)
#   OUT=results.md bash benchmarks/gpu_check.sh ...       # results file (default: $OUT/gpu_check.md or ./gpu_check.md)
#
# Uses .venv/bin/python when it exists (the README's environment), else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
platform=CUDA
quick=""
while [ $# -gt 0 ]; do
  case "$1" in
    --platform) platform="$2"; shift 2 ;;
    --quick) quick="--quick"; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (use --platform NAME, --quick)" >&2; exit 2 ;;
  esac
done
py=python3
[ -x .venv/bin/python ] && py=.venv/bin/python
if [ -n "${OUT:-}" ] && [ -d "${OUT}" ]; then results="${OUT}/gpu_check.md"; else results="${OUT:-gpu_check.md}"; fi
systems="alanine-dipeptide-water chignolin-water"
steps=2000; repeats=3
if [ -n "$quick" ]; then systems="alanine-dipeptide"; fi
{
  echo "# aesample GPU check ($(date -u '+%Y-%m-%d %H:%M UTC'), platform $platform${quick:+, quick})"
  echo
  echo '```'
  "$py" -c "import torch, openmm; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'); print('openmm', openmm.__version__, '| platforms', [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())])"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
  echo '```'
  echo
  echo "## GPU tests (pytest -m gpu)"
  echo
  echo '```'
  # exit code 5 = no test selected; a failure is recorded, the benchmark still runs
  OMP_NUM_THREADS=1 "$py" -m pytest -q -m gpu -p no:cacheprovider 2>&1 | tail -15 || true
  echo '```'
} > "$results"
export OMP_NUM_THREADS=1
status=0
timeout 420 "$py" benchmarks/learned_cv_speed.py --systems $systems --platform "$platform" --steps "$steps" \
  --repeats "$repeats" --mts 2 --graphs --no-contention $quick > "$results.log" 2>&1 || status=$?
grep -v -E "^(USDT|ERROR):|UserWarning|_warn_once" "$results.log" >> "$results" || true
rm -f "$results.log"
[ "$status" -eq 0 ] || echo "benchmark failed or timed out (exit $status)" >> "$results"
echo "gpu_check: results in $results"
exit "$status"
