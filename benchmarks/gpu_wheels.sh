#!/usr/bin/env bash
# Packs what the GPU device image lacks for benchmarks/gpu_check.sh, for its Python 3.12 (run here, where PyPI is
# reachable; the device reaches nothing). Writes into git-ignored folders, sized so that each of the two device calls
# carries the working tree (36 MiB) and one folder under the device's 64 MiB:
#   .whl-sitk/simpleitk.part-aa   the first 20 MiB of SimpleITK as xz -9 (torchio imports it; 270 MB unpacked)
#   .whl/simpleitk.part-ab        the rest of it (~7 MiB)
#   .whl/site.tar.xz              monai, pytorch-ignite, nibabel, pydicom, fire, termcolor, diffdrr (its 34 MB of
#                                 example data left out: the check renders synthetic volumes), nanodrr, torchio, roma,
#                                 fastcore, deprecated, platformdirs (~6 MB)
# The versions are the ones the CPU suite runs with (setup.cfg, .ci/run). The compressed SimpleITK is kept in
# .gpu_wheels_cache/ (compressing it takes minutes) and reused unless --force is given.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(monai==1.6.1 pytorch-ignite==0.5.5 nibabel==5.4.2 pydicom==3.0.2 fire==0.7.1 termcolor==3.3.0
  diffdrr==0.6.1 nanodrr==0.1.7 torchio==1.2.1 roma==1.8.0 fastcore==2.2.41 deprecated==1.3.1 platformdirs==4.14.9)
SITK=simpleitk==2.5.7
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
BUILD=$(mktemp -d /tmp/gpu_wheels.XXXXXX)
trap 'rm -rf "$BUILD"' EXIT

download() {
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$BUILD/wheels" "$@"
}
CACHE=.gpu_wheels_cache/simpleitk.tar.xz
KEEP_SITK=0
[ -f "$CACHE" ] && [ "${1:-}" != --force ] && KEEP_SITK=1
if [ "$KEEP_SITK" = 1 ]; then download "${PACKAGES[@]}"; else download "${PACKAGES[@]}" "$SITK"; fi

# Wheels are zip files: unpacking one is installing it without compiling (what pip --target --no-compile does).
mkdir -p "$BUILD/site" "$BUILD/sitk" .whl .whl-sitk .gpu_wheels_cache
rm -f .whl/* .whl-sitk/*
for wheel in "$BUILD"/wheels/*.whl; do
  case "$(basename "$wheel")" in
    [Ss]imple[Ii][Tt][Kk]-*) python3 -m zipfile -e "$wheel" "$BUILD/sitk" ;;
    *) python3 -m zipfile -e "$wheel" "$BUILD/site" ;;
  esac
done
rm -rf "$BUILD/site/diffdrr/data"/*.nii.gz "$BUILD/site/diffdrr/data"/*.gz 2>/dev/null || true
find "$BUILD" -name '*.so' -exec chmod +x {} +
tar -C "$BUILD/site" -cf - . | xz -9 -T0 >.whl/site.tar.xz
[ "$KEEP_SITK" = 1 ] || tar -C "$BUILD/sitk" -cf - . | xz -9 -T0 >"$CACHE"
split -b 20M "$CACHE" "$BUILD/simpleitk.part-"
mv "$BUILD/simpleitk.part-aa" .whl-sitk/
mv "$BUILD/simpleitk.part-ab" .whl/
[ ! -e "$BUILD/simpleitk.part-ac" ] || { echo "gpu_wheels.sh: SimpleITK needs more than two parts" >&2; exit 1; }
ls -l .whl .whl-sitk
tree=$(git ls-files -z | du -cb --files0-from=- | tail -n 1 | cut -f 1)
for folder in .whl-sitk .whl; do
  du -cb "$folder" | tail -n 1 | awk -v t="$tree" -v f="$folder" \
    '{printf "call carrying %s: %.1f MiB with the working tree (limit 64 MiB)\n", f, (t + $1) / 2^20}'
done
