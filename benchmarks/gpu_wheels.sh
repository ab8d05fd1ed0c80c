#!/usr/bin/env bash
# Packs what the GPU device image lacks for benchmarks/gpu_check.sh, for its Python 3.12 (run here, where PyPI is
# reachable; the device reaches nothing). Writes two archives in git-ignored folders, each small enough to travel
# with the working tree (36 MiB) under the device's 64 MiB per call:
#   .whl/site.tar.xz            monai, pytorch-ignite, nibabel, pydicom, fire, termcolor, diffdrr (its 34 MB of
#                               example data left out: the check renders synthetic volumes), nanodrr, torchio, roma,
#                               fastcore, deprecated, platformdirs                         (~4 MB)
#   .whl-sitk/simpleitk.tar.xz  SimpleITK (torchio imports it; 270 MB unpacked, 28 MB as xz -9)
# The versions are the ones the CPU suite runs with (setup.cfg, .ci/run). An existing SimpleITK archive is kept
# (compressing it takes minutes) unless --force is given.
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
KEEP_SITK=0
[ -f .whl-sitk/simpleitk.tar.xz ] && [ "${1:-}" != --force ] && KEEP_SITK=1
if [ "$KEEP_SITK" = 1 ]; then download "${PACKAGES[@]}"; else download "${PACKAGES[@]}" "$SITK"; fi

# Wheels are zip files: unpacking one is installing it without compiling (what pip --target --no-compile does).
mkdir -p "$BUILD/site" "$BUILD/sitk" .whl .whl-sitk
for wheel in "$BUILD"/wheels/*.whl; do
  case "$(basename "$wheel")" in
    [Ss]imple[Ii][Tt][Kk]-*) python3 -m zipfile -e "$wheel" "$BUILD/sitk" ;;
    *) python3 -m zipfile -e "$wheel" "$BUILD/site" ;;
  esac
done
rm -rf "$BUILD/site/diffdrr/data"/*.nii.gz "$BUILD/site/diffdrr/data"/*.gz 2>/dev/null || true
find "$BUILD" -name '*.so' -exec chmod +x {} +
tar -C "$BUILD/site" -cf - . | xz -9 -T0 >.whl/site.tar.xz
[ "$KEEP_SITK" = 1 ] || tar -C "$BUILD/sitk" -cf - . | xz -9 -T0 >.whl-sitk/simpleitk.tar.xz
ls -l .whl/site.tar.xz .whl-sitk/simpleitk.tar.xz
git ls-files -z | du -cb --files0-from=- | tail -n 1 | awk '{printf "working tree: %.1f MiB (each call carries it and one archive; limit 64 MiB)\n", $1 / 2^20}'
