#!/usr/bin/env bash
# The GPU check of issue 18: one command, at most 9 minutes on one H200, that installs what the device image lacks,
# runs the CUDA tests and every GPU measurement (benchmarks/gpu_check.py), and writes
# benchmarks/results/gpu_summary.json and gpu_summary.md (also copied to $OUT when the device tool sets it).
#
#   bash benchmarks/gpu_check.sh                  # on the GPU
#   bash benchmarks/gpu_check.sh --dry-run        # the same script on the CPU at tiny sizes (about a minute)
#   bash benchmarks/gpu_check.sh --unpack-only    # only unpack the carried packages (first of the two device calls)
#   options: --out DIR (default benchmarks/results; the dry run: a temporary folder), --work DIR, --use-carried (the
#   dry run with the carried packages instead of the installed ones), --sections "train compile" (rerun only these, e.g.
#   after a fix, in the same --work folder: the summary takes the other sections' rows from the earlier run)
#
# Packages: the device image has torch, triton, numpy, scipy, pandas, pyyaml, tqdm, tensorboard, einops, jaxtyping,
# rich, typer, humanize; benchmarks/gpu_wheels.sh (run where PyPI is reachable) puts the rest, for Python 3.12, into
# .whl/site.tar.xz (monai, pytorch-ignite, nibabel, pydicom, fire, diffdrr without its example data, nanodrr,
# torchio and their small needs) and .whl-sitk/simpleitk.tar.xz (SimpleITK, which torchio imports: 28 MB, too large
# to travel in the same call as the rest and the working tree's 36 MiB under the 64 MiB limit). So the device run is
# two calls on one warm machine (it stays warm 30 s after a call; what a call unpacks in /tmp stays):
#   1. carry [".whl-sitk"], command: bash benchmarks/gpu_check.sh --unpack-only
#   2. carry [".whl"],      command: bash benchmarks/gpu_check.sh
# Without SimpleITK (a cold machine at call 2) torchio does not import: the DRR section then times our renderer
# alone and says that the peers are missing; everything else runs.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=0
UNPACK_ONLY=0
USE_CARRIED=0
ONLY=""
OUT_DIR=""
WORK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --unpack-only) UNPACK_ONLY=1 ;;
    --use-carried) USE_CARRIED=1 ;;
    --sections) ONLY=" $2 "; shift ;;
    --out) OUT_DIR=$2; shift ;;
    --work) WORK=$2; shift ;;
    *) echo "gpu_check.sh: unknown option $1 (expected --dry-run, --unpack-only, --use-carried, --sections LIST, --out DIR, --work DIR)" >&2; exit 2 ;;
  esac
  shift
done

SITE=/tmp/gpu_check_site
# The dry run uses the packages installed here, unless --use-carried (a check of the carried set in an environment
# like the device's): carried packages would otherwise shadow the local ones.
if [ "$DRY" = 1 ] && [ "$USE_CARRIED" = 0 ]; then SITE=/nonexistent; fi
for archive in .whl/site.tar.xz .whl-sitk/simpleitk.tar.xz; do
  [ "$SITE" = /nonexistent ] && break
  if [ -f "$archive" ]; then
    # Python's tarfile (lzma is in the standard library): the image need not have xz
    mkdir -p "$SITE" && ${PYTHON:-python3} -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
      "$archive" "$SITE" || { echo "gpu_check.sh: cannot unpack $archive into $SITE" >&2; exit 1; }
    echo "unpacked $archive into $SITE"
  fi
done
[ "$UNPACK_ONLY" = 1 ] && exit 0
[ -d "$SITE" ] && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$ROOT/bundle:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

if [ "$DRY" = 1 ]; then
  BUDGET=480                # seconds for everything on 2 CPU cores (about 2 minutes when the machine is quiet)
  FLAG=--dry-run
  WORK=${WORK:-$(mktemp -d /tmp/gpu_check_dry.XXXXXX)}
  OUT_DIR=${OUT_DIR:-$WORK}
else
  BUDGET=535                # 9 minutes less the summary and the copy
  FLAG=
  WORK=${WORK:-/tmp/gpu_check_work}
  OUT_DIR=${OUT_DIR:-$ROOT/benchmarks/results}
fi
mkdir -p "$WORK" "$OUT_DIR"
LOG=$WORK/gpu_check.log
START=$(date +%s)
echo "gpu_check.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), work $WORK, out $OUT_DIR, budget ${BUDGET} s" | tee "$LOG"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$LOG"

# run NAME LIMIT_S COMMAND...: at most LIMIT_S seconds and never past the budget; its status in WORK/NAME.status.
run() {
  local name=$1 limit=$2; shift 2
  local left=$((BUDGET - ($(date +%s) - START)))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    echo "skipped: no time left in the ${BUDGET} s budget" >"$WORK/$name.status"
    echo "== $name: skipped (budget spent)" | tee -a "$LOG"
    return
  fi
  echo "== $name (at most ${limit} s)" | tee -a "$LOG"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  local took=$(($(date +%s) - t0))
  if [ $rc = 124 ] || [ $rc = 137 ]; then
    echo "timed out after ${took} s (limit ${limit} s); rows measured before are kept" >"$WORK/$name.status"
  elif [ $rc != 0 ]; then
    # the section writes "failed ...: the error" itself; a crash that could not (a signal, a CUDA abort) gets this
    grep -qs '^failed' "$WORK/$name.status" || echo "failed: exit code $rc after ${took} s (see gpu_check.log)" >"$WORK/$name.status"
  elif [ ! -f "$WORK/$name.status" ]; then
    echo "failed: exit code 0 after ${took} s but no status written" >"$WORK/$name.status"
  fi
  echo "== $name: $(cat "$WORK/$name.status")" | tee -a "$LOG"
}

wanted() { [ -z "$ONLY" ] || [[ "$ONLY" == *" $1 "* ]]; }
for name in $ONLY; do
  case " cuda_tests drr train inference compile workflow " in
    *" $name "*) rm -f "$WORK/$name.status" "$WORK/$name.json" ;;
    *) echo "gpu_check.sh: unknown section $name (expected cuda_tests drr train inference compile workflow)" >&2; exit 2 ;;
  esac
done
[ -z "$ONLY" ] && rm -f "$WORK"/*.status "$WORK"/*.json
# The CUDA tests: CPU/GPU agreement of the renderer and of a cascade forward pass (skipped without CUDA).
# Only the files that hold such tests: the others import packages the device image lacks (jsonschema, itk).
cuda_tests() {
  $PY -m pytest -q -p no:cacheprovider -k cuda -rs $(grep -lE "def test_[A-Za-z0-9_]*cuda" tests/test_*.py) \
    >"$WORK/cuda_tests.txt" 2>&1
  local rc=$?
  # pytest: 0 all passed, 5 none collected; anything else is a failure
  if [ $rc = 0 ] || [ $rc = 5 ]; then echo "ok: $(tail -n 1 "$WORK/cuda_tests.txt")" >"$WORK/cuda_tests.status"
  else echo "failed: $(tail -n 1 "$WORK/cuda_tests.txt")" >"$WORK/cuda_tests.status"; fi
  cat "$WORK/cuda_tests.txt"
}
export -f cuda_tests
export PY WORK
if [ "$DRY" = 1 ]; then
  LIMITS=(drr:60 train:120 inference:60 compile:60 workflow:150)
else
  LIMITS=(drr:60 train:90 inference:75 workflow:230 compile:150)
fi
wanted cuda_tests && run cuda_tests 60 bash -c cuda_tests
for entry in "${LIMITS[@]}"; do
  name=${entry%%:*}
  wanted "$name" || continue
  run "$name" "${entry##*:}" $PY benchmarks/gpu_check.py --section "$name" --work "$WORK" $FLAG
done

$PY benchmarks/gpu_check.py --summarize --work "$WORK" --out "$OUT_DIR" $FLAG >>"$LOG" 2>&1 \
  || echo "gpu_check.sh: the summary failed (see $LOG)" | tee -a "$LOG"
echo "gpu_check.sh: done in $(($(date +%s) - START)) s" | tee -a "$LOG"
cp "$LOG" "$OUT_DIR/gpu_check.log" 2>/dev/null
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$OUT_DIR"/gpu_summary.json "$OUT_DIR"/gpu_summary.md "$LOG" "$WORK/cuda_tests.txt" "$OUT/" 2>/dev/null
fi
[ -f "$OUT_DIR/gpu_summary.json" ]
