#!/usr/bin/env bash
# MONAI Label check of the bundle and its app (monailabel_app/): inference through MONAI Label's BundleInferTask, as
# `monailabel start_server --app monailabel_app` runs it, on X-rays rendered from a synthetic chest phantom.
#
#   tests/monailabel/run.sh [--server] [--orthanc] [--keep]
#
# 1. A virtual environment with MONAI Label (its own: MONAI Label needs numpy<2 and pydicom<3, the bundle's
#    environment has numpy 2 and pydicom 3), created once under $MONAILABEL_VENV and reused.
# 2. A copy of bundle/ (configs, scripts, models/model.pt and models/baselines/ when shipped) and of monailabel_app/ side by side in a work
#    folder, as in the repository. Without a shipped model.pt, untrained weights of the configured preset are saved
#    into the copy (bundle/ is never written).
# 3. Inputs, made with the bundle's own environment ($BUNDLE_PYTHON): a phantom CT (NIfTI) and its PA/lateral views
#    rendered with the training geometry (PNG).
# 4. infer.py in the MONAI Label environment: the app's CT model and tissue model called in-process (task(request))
#    for the CT and the PA PNG: int16 HU on the last stage grid, RAS, fov_mm/grid mm voxels, the same CT as the
#    bundle's own preprocessing -> inferer -> postprocessing; the CT asked for as .nrrd uint8/uint16 (a label client's
#    format) still int16 HU; the tissue label map equal to the labels of the CT it stores; bad requests refused.
# --server also starts `monailabel start_server --app <copy of monailabel_app> --studies <phantoms>` on 127.0.0.1 with
# the app's defaults (no --conf: it serves ../bundle as xray2ct and xray2ct_tissue) and runs server.py: REST requests
# (by datastore id, by upload, a pair by path, label formats, a refused one), the requests 3D Slicer's MONAI Label
# module sends (Run, Next Sample, the automatic Run), and MONAI Label's Python client.
# --orthanc starts Orthanc with its DICOMweb plugin on 127.0.0.1 (Debian's orthanc + orthanc-dicomweb), stores a PA +
# lateral DX pair of one study through Orthanc's REST API (pacs_inputs.py), starts `monailabel start_server --app
# <copy> --studies http://127.0.0.1:<port>/dicom-web` and runs orthanc_check.py: inference by MONAI Label's Python
# client for the PA series (and the tissue model for the lateral series), then QIDO-RS / WADO-RS: the study holds the
# synthetic CT series, with the geometry and HU of the CT the server returned. --keep keeps the work folder.
#
# Environment: MONAILABEL_VENV (default ~/.cache/xray2ct-monailabel-venv), BUNDLE_PYTHON (default python),
# MONAILABEL_BASE_PYTHON (python that creates the venv, default python3), MONAILABEL_STEPS (num_inference_steps
# per stage, default 2), MONAILABEL_WORKDIR (work folder, kept; default a new temporary one), MONAILABEL_PORT.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${MONAILABEL_VENV:-$HOME/.cache/xray2ct-monailabel-venv}"
BUNDLE_PYTHON="${BUNDLE_PYTHON:-python}"
BASE_PYTHON="${MONAILABEL_BASE_PYTHON:-python3}"
STEPS="${MONAILABEL_STEPS:-2}"
SERVER=0
ORTHANC=0
KEEP=0
for arg in "$@"; do
    case "$arg" in
        --server) SERVER=1 ;;
        --orthanc) ORTHANC=1 ;;
        --keep) KEEP=1 ;;
        -h | --help) sed -n '2,31p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $arg (see --help)" >&2; exit 2 ;;
    esac
done

# What the environment holds. torch: MONAI Label imports torchvision at import time (monailabel/transform/post.py)
# and PyPI's torchvision does not load beside the CPU build of torch 2.13.0 ("operator torchvision::nms does not
# exist"), so this environment takes torch 2.14.1 with its matching torchvision 0.29.1 (the default builds; on this
# kind of machine both lie on disk). monailabel 0.8.5 accepts monai>=1.4 and resolves monai 1.6.1, the bundle's
# version. numpy<2 comes from monailabel's numpymaxflow; pydicom<3 because pydicom-seg (used by MONAI Label's DICOM
# SEG conversion) imports pydicom._storage_sopclass_uids, which pydicom 3 removed.
TORCH_SPEC=(torch==2.14.1 torchvision==0.29.1)
MONAILABEL_SPEC=(monailabel==0.8.5)
CONSTRAINTS=$'torch==2.14.1\ntorchvision==0.29.1\nnumpy<2\npydicom<3'
STAMP="${TORCH_SPEC[*]} ${MONAILABEL_SPEC[*]} ${CONSTRAINTS//$'\n'/ }"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
log() { echo "[monailabel-check] $*"; }

# pip's output only when it fails (this machine's extra indexes warn about every package they do not hold).
venv_pip() {
    local out
    out="$(mktemp)"
    if ! "$VENV/bin/python" -m pip "$@" >"$out" 2>&1; then
        grep -v "is ignored: it is neither a file nor a directory" "$out" | tail -n 40 >&2
        rm -f "$out"
        return 1
    fi
    rm -f "$out"
}

# ---- 1. the MONAI Label environment ------------------------------------------------------------------------------
start_all="$(now)"
if [[ -x "$VENV/bin/python" && -f "$VENV/.xray2ct-stamp" && "$(cat "$VENV/.xray2ct-stamp")" == "$STAMP" ]]; then
    log "reusing $VENV"
    install_s=0
else
    log "creating $VENV (${TORCH_SPEC[*]}, then ${MONAILABEL_SPEC[*]}; several minutes)"
    start="$(now)"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$BASE_PYTHON" -m venv "$VENV"
    venv_pip install --quiet --upgrade pip
    # torch first, on its own: otherwise the resolver is free to pick any torch that some dependency accepts.
    venv_pip install --quiet "${TORCH_SPEC[@]}"
    printf '%s\n' "$CONSTRAINTS" >"$VENV/xray2ct-constraints.txt"
    venv_pip install --quiet -c "$VENV/xray2ct-constraints.txt" "${MONAILABEL_SPEC[@]}"
    printf '%s' "$STAMP" >"$VENV/.xray2ct-stamp"
    install_s="$(elapsed "$start")"
    log "environment ready in ${install_s} s"
fi
"$VENV/bin/python" - <<'EOF'
import monai, monailabel, numpy, pydicom, torch, torchvision
print(f"[monailabel-check] monailabel {monailabel.__version__}, monai {monai.__version__}, torch {torch.__version__}, "
      f"torchvision {torchvision.__version__}, numpy {numpy.__version__}, pydicom {pydicom.__version__}")
EOF

# ---- 2. a copy of the bundle -------------------------------------------------------------------------------------
if [[ -n "${MONAILABEL_WORKDIR:-}" ]]; then
    WORK="$MONAILABEL_WORKDIR"
    mkdir -p "$WORK"
    KEEP=1
else
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/xray2ct-monailabel.XXXXXX")"
fi
SERVER_PID=""
PACS_SERVER_PID=""
ORTHANC_PID=""
cleanup() {
    for pid in "$SERVER_PID" "$PACS_SERVER_PID" "$ORTHANC_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    if [[ "$KEEP" == 1 ]]; then
        log "work folder kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

BUNDLE="$WORK/bundle"  # beside the app copy: the app's default --conf models is ../bundle, served as xray2ct
APP="$WORK/monailabel_app"  # start_server creates model/, logs/, bin/ in the app folder: a copy keeps the tree clean
rm -rf "$BUNDLE" "$APP" "$WORK/studies"
mkdir -p "$BUNDLE/models"
cp -R "$ROOT/bundle/configs" "$ROOT/bundle/scripts" "$ROOT/bundle/LICENSE" "$BUNDLE/"
cp -R "$ROOT/monailabel_app" "$APP"
rm -rf "$APP/model" "$APP/logs" "$APP/bin"
find "$BUNDLE" "$APP" -name __pycache__ -prune -exec rm -rf {} +
if [[ -f "$ROOT/bundle/models/model.pt" ]]; then
    cp "$ROOT/bundle/models/model.pt" "$BUNDLE/models/model.pt"
    # The shipped cascade is sampled with its regression prior by default (inference.yaml regression_prior).
    cp -R "$ROOT/bundle/models/baselines" "$BUNDLE/models/"
    log "bundle and app copied to $WORK with the shipped models/model.pt and models/baselines/"
else
    log "bundle and app copied to $WORK; no shipped models/model.pt: untrained weights will be made for the copy"
fi

# ---- 3. inputs (and weights when none are shipped), with the bundle's own environment ----------------------------
start="$(now)"
"$BUNDLE_PYTHON" "$HERE/prepare_inputs.py" "$BUNDLE" "$WORK/studies"
prepare_s="$(elapsed "$start")"
log "inputs ready in ${prepare_s} s"

# ---- 4. inference through BundleInferTask ------------------------------------------------------------------------
start="$(now)"
(cd "$WORK" && "$VENV/bin/python" "$HERE/infer.py" "$BUNDLE" "$WORK/studies" --steps "$STEPS" --out "$WORK/report.json") \
    >"$WORK/infer.out" 2>"$WORK/infer.log" \
    || { cat "$WORK/infer.out"; tail -n 60 "$WORK/infer.log" >&2; log "FAILED (log: $WORK/infer.log)"; KEEP=1; exit 1; }
sed 's/^/[monailabel-check] /' "$WORK/infer.out"
infer_s="$(elapsed "$start")"

server_s=""
if [[ "$SERVER" == 1 ]]; then
    start="$(now)"
    PORT="${MONAILABEL_PORT:-$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}"
    log "starting monailabel start_server --app $APP on 127.0.0.1:$PORT"
    # What the `monailabel` launcher runs (it calls whichever `python` is first on PATH, so: the venv's explicitly).
    (cd "$WORK" && exec "$VENV/bin/python" -m monailabel.main start_server --app "$APP" --studies "$WORK/studies" \
        --host 127.0.0.1 --port "$PORT") >"$WORK/server.log" 2>&1 &
    SERVER_PID=$!
    up=0
    for _ in $(seq 1 180); do
        if curl -sf "http://127.0.0.1:$PORT/info/" >/dev/null 2>&1; then up=1; break; fi
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
        sleep 1
    done
    if [[ "$up" != 1 ]]; then tail -n 40 "$WORK/server.log" >&2; log "FAILED: the server did not come up"; KEEP=1; exit 1; fi
    log "server up after $(elapsed "$start") s"
    (cd "$WORK" && "$VENV/bin/python" "$HERE/server.py" "http://127.0.0.1:$PORT" "$BUNDLE" "$WORK/studies" \
        --steps "$STEPS" --out "$WORK/server_report.json") >"$WORK/server_check.out" 2>&1 \
        || { tail -n 40 "$WORK/server_check.out" "$WORK/server.log" >&2; log "FAILED over HTTP"; KEEP=1; exit 1; }
    sed 's/^/[monailabel-check] /' "$WORK/server_check.out"
    server_s="$(elapsed "$start")"
fi

free_port() { "$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# wait_for URL PID SECONDS: until URL answers, the process PID exits, or SECONDS pass.
wait_for() {
    for _ in $(seq 1 "$3"); do
        if curl -sf "$1" >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$2" 2>/dev/null; then return 1; fi
        sleep 1
    done
    return 1
}

orthanc_s=""
if [[ "$ORTHANC" == 1 ]]; then
    start="$(now)"
    if ! command -v Orthanc >/dev/null; then
        log "FAILED: --orthanc needs Orthanc and its DICOMweb plugin (apt-get install orthanc orthanc-dicomweb)"; exit 1
    fi
    OPORT="$(free_port)"
    MPORT="$(free_port)"
    "$BUNDLE_PYTHON" "$HERE/pacs_inputs.py" "$BUNDLE" "$WORK/pacs" "$OPORT" >"$WORK/pacs_inputs.out"
    (cd "$WORK/pacs" && exec Orthanc "$WORK/pacs/orthanc.json") >"$WORK/orthanc.log" 2>&1 &
    ORTHANC_PID=$!
    if ! wait_for "http://127.0.0.1:$OPORT/system" "$ORTHANC_PID" 60; then
        tail -n 20 "$WORK/orthanc.log" >&2; log "FAILED: Orthanc did not come up"; KEEP=1; exit 1
    fi
    # The pair goes in through Orthanc's own REST API, so that the check does not depend on the code under test.
    for view in pa lateral; do
        curl -sf -X POST --data-binary "@$WORK/pacs/$view.dcm" "http://127.0.0.1:$OPORT/instances" >/dev/null \
            || { log "FAILED: Orthanc refused $view.dcm"; KEEP=1; exit 1; }
    done
    DICOMWEB="http://127.0.0.1:$OPORT/dicom-web"
    log "Orthanc up with a PA + lateral DX study at $DICOMWEB; starting monailabel start_server --studies $DICOMWEB"
    (cd "$WORK" && MONAI_LABEL_DICOMWEB_CACHE_PATH="$WORK/dicomweb-cache" exec "$VENV/bin/python" -m monailabel.main \
        start_server --app "$APP" --studies "$DICOMWEB" --host 127.0.0.1 --port "$MPORT") >"$WORK/orthanc_server.log" 2>&1 &
    PACS_SERVER_PID=$!
    if ! wait_for "http://127.0.0.1:$MPORT/info/" "$PACS_SERVER_PID" 180; then
        tail -n 40 "$WORK/orthanc_server.log" >&2; log "FAILED: the server did not come up"; KEEP=1; exit 1
    fi
    log "server up after $(elapsed "$start") s"
    (cd "$WORK" && "$VENV/bin/python" "$HERE/orthanc_check.py" "http://127.0.0.1:$MPORT" "$DICOMWEB" \
        "$WORK/pacs/pacs_inputs.json" --steps "$STEPS" --out "$WORK/orthanc_report.json") >"$WORK/orthanc_check.out" 2>&1 \
        || { tail -n 40 "$WORK/orthanc_check.out" "$WORK/orthanc_server.log" >&2; log "FAILED over DICOMweb"; KEEP=1; exit 1; }
    sed 's/^/[monailabel-check] /' "$WORK/orthanc_check.out"
    orthanc_s="$(elapsed "$start")"
fi

log "timings (s): environment ${install_s} (0 = reused), inputs ${prepare_s}, BundleInferTask check ${infer_s}${server_s:+, server check ${server_s}}${orthanc_s:+, Orthanc check ${orthanc_s}}, total $(elapsed "$start_all")"
if [[ "$KEEP" == 1 ]]; then
    log "PASSED (measurements: $WORK/report.json${server_s:+, $WORK/server_report.json}${orthanc_s:+, $WORK/orthanc_report.json})"
else
    log "PASSED"
fi
