#!/usr/bin/env bash
# The GPU check of issue 18: one command, at most 9 minutes on one H200, that installs what the device image lacks,
# runs the CUDA tests and every GPU measurement (benchmarks/gpu_check.py), and writes
# benchmarks/results/gpu_summary.json and gpu_summary.md (also copied to $OUT when the device tool sets it).
#
#   bash benchmarks/gpu_check.sh                  # on the GPU
#   bash benchmarks/gpu_check.sh --dry-run        # the same script on the CPU at tiny sizes (about 2 minutes)
#   bash benchmarks/gpu_check.sh --unpack-only    # only take in the carried packages (first of the two device calls)
#   options: --out DIR (default benchmarks/results; the dry run: a temporary folder), --work DIR, --use-carried (the
#   dry run with the carried packages instead of the installed ones), --sections "train compile" (rerun only these, e.g.
#   after a fix, in the same --work folder: the summary takes the other sections' rows from the earlier run)
#
# Exit status: 0 when the summary was written, even if sections failed or timed out (each section's status is in
# the summary and the log); 1 when no summary could be written; 2 for a bad option.
#
# Packages: the device image has torch, triton, numpy, scipy, pandas, pyyaml, tqdm, tensorboard, einops, jaxtyping,
# rich, typer, humanize, wrapt; benchmarks/gpu_wheels.sh (run where PyPI is reachable) packs the rest for Python 3.12:
# .whl/site.tar.xz (monai, pytorch-ignite, nibabel, pydicom, fire, diffdrr without its example data, nanodrr, torchio
# and their small needs) and SimpleITK (torchio imports it; 28 MB as xz) in two parts, .whl-sitk/simpleitk.part-aa
# (20 MiB) and .whl/simpleitk.part-ab: the whole of it does not travel in one call with the 36 MiB working tree under
# the device's 64 MiB. So the device run is two calls on one warm machine (warm 30 s after a call; /tmp stays):
#   1. carry [".whl-sitk"], command: bash benchmarks/gpu_check.sh --unpack-only      (stores part aa in /tmp)
#   2. carry [".whl"],      command: bash benchmarks/gpu_check.sh                    (joins, unpacks, runs)
# On a cold machine at call 2 part aa is gone and torchio does not import: the DRR section then times our renderer
# alone and records the peers' import failure; everything else runs.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)

usage="expected --dry-run, --unpack-only, --use-carried, --sections LIST, --out DIR, --work DIR"
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
    --sections | --out | --work)
      [ $# -ge 2 ] || { echo "gpu_check.sh: $1 needs a value ($usage)" >&2; exit 2; }
      case "$1" in --sections) ONLY=" $2 " ;; --out) OUT_DIR=$2 ;; --work) WORK=$2 ;; esac
      shift ;;
    *) echo "gpu_check.sh: unknown option $1 ($usage)" >&2; exit 2 ;;
  esac
  shift
done
SECTIONS=" cuda_tests drr train inference compile workflow "
for name in $ONLY; do
  [[ "$SECTIONS" == *" $name "* ]] || { echo "gpu_check.sh: unknown section $name (expected${SECTIONS% })" >&2; exit 2; }
done
PY=${PYTHON:-python3}

# ---- the carried packages -----------------------------------------------------------------------------------------
SITE=/tmp/gpu_check_site
PARTS=/tmp/gpu_check_parts
# The dry run uses the packages installed here, unless --use-carried (a check of the carried set in an environment
# like the device's): carried packages would otherwise shadow the local ones.
if [ "$DRY" = 1 ] && [ "$USE_CARRIED" = 0 ]; then SITE=""; fi
unpack() {  # ARCHIVE: into $SITE once (a marker per archive and size), with Python's tarfile (the image need not have xz)
  local marker="$SITE/.unpacked-$(basename "$1")-$(stat -c %s "$1")"
  [ -f "$marker" ] && return 0
  mkdir -p "$SITE" && $PY -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' \
    "$1" "$SITE" || { echo "gpu_check.sh: cannot unpack $1 into $SITE" >&2; exit 1; }
  touch "$marker"
  echo "unpacked $1 into $SITE"
}
if [ -n "$SITE" ]; then
  mkdir -p "$PARTS"
  for part in .whl-sitk/simpleitk.part-* .whl/simpleitk.part-*; do [ -f "$part" ] && cp "$part" "$PARTS/"; done
  [ -f .whl/site.tar.xz ] && unpack .whl/site.tar.xz
  if [ "$UNPACK_ONLY" = 0 ] && [ -f "$PARTS/simpleitk.part-aa" ] && [ -f "$PARTS/simpleitk.part-ab" ]; then
    cat "$PARTS"/simpleitk.part-* >"$PARTS/simpleitk.tar.xz" && unpack "$PARTS/simpleitk.tar.xz"
  fi
fi
if [ "$UNPACK_ONLY" = 1 ]; then ls -l "$PARTS" 2>/dev/null; exit 0; fi
[ -n "$SITE" ] && [ -d "$SITE" ] && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONPATH="$ROOT/bundle:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# ---- budget, folders, log -----------------------------------------------------------------------------------------
if [ "$DRY" = 1 ]; then
  # The limits only stop a hung section: on a loaded 2-core machine the dry run's sections take minutes, not seconds.
  BUDGET=1500
  LIMITS=(cuda_tests:300 drr:300 train:300 inference:300 compile:300 workflow:300)
  FLAG=--dry-run
  WORK=${WORK:-$(mktemp -d /tmp/gpu_check_dry.XXXXXX)}
  OUT_DIR=${OUT_DIR:-$WORK}
else
  # 9 minutes from the start, less ~40 s for the summary (imports, the FLOP count at full size) and the copies.
  # Ordered by what the issue's targets need; each limit is also cut to what is left of the budget.
  BUDGET=500
  LIMITS=(cuda_tests:75 drr:60 train:90 inference:60 compile:110 workflow:190)
  FLAG=
  WORK=${WORK:-/tmp/gpu_check_work}
  OUT_DIR=${OUT_DIR:-$ROOT/benchmarks/results}
fi
mkdir -p "$WORK" "$OUT_DIR"
LOG=$WORK/gpu_check.log
[ -z "$ONLY" ] && rm -f "$WORK"/*.status "$WORK"/*.json "$LOG"
for name in $ONLY; do rm -f "$WORK/$name.status" "$WORK/$name.json"; done
echo "gpu_check.sh: $(date -u '+%Y-%m-%d %H:%M UTC'), work $WORK, out $OUT_DIR, budget ${BUDGET} s${ONLY:+, sections$ONLY}" | tee -a "$LOG"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$LOG"

# snapshot: what exists so far into $OUT (when the device tool sets it), so that a call stopped at its limit still
# returns every section's rows and the logs (one archive: the tool returns at most 8 files).
snapshot() {
  [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ] || return 0
  tar -czf "$OUT/gpu_check_work.tar.gz" -C "$WORK" --exclude='workflow/data' --exclude='workflow/eval_data' \
    --exclude='workflow/ckpt' --exclude='workflow/runs' --exclude='workflow/evaluation' . 2>/dev/null
  cp "$LOG" "$OUT/" 2>/dev/null
  for f in gpu_summary.json gpu_summary.md; do [ -f "$OUT_DIR/$f" ] && cp "$OUT_DIR/$f" "$OUT/"; done
  return 0
}

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
  timeout --kill-after=5 "$limit" "$@" >>"$LOG" 2>&1
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
  snapshot
}

# The CUDA tests: CPU/GPU agreement of the renderer and of a cascade forward pass, the bf16 paths (skipped without
# CUDA). Only the files that hold such tests: the others import packages the device image lacks (jsonschema, itk).
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

for entry in "${LIMITS[@]}"; do
  name=${entry%%:*}
  [ -z "$ONLY" ] || [[ "$ONLY" == *" $name "* ]] || continue
  if [ "$name" = cuda_tests ]; then
    run cuda_tests "${entry##*:}" bash -c cuda_tests
  else
    run "$name" "${entry##*:}" $PY benchmarks/gpu_check.py --section "$name" --work "$WORK" $FLAG
  fi
done

$PY benchmarks/gpu_check.py --summarize --work "$WORK" --out "$OUT_DIR" $FLAG >>"$LOG" 2>&1 \
  || echo "gpu_check.sh: the summary failed (see $LOG)" | tee -a "$LOG"
echo "gpu_check.sh: done in $(($(date +%s) - START)) s" | tee -a "$LOG"
[ "$OUT_DIR" = "$WORK" ] || cp "$LOG" "$OUT_DIR/gpu_check.log" 2>/dev/null
snapshot
[ -f "$OUT_DIR/gpu_summary.json" ]
