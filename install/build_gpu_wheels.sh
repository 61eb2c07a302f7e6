#!/usr/bin/env bash
# Builds .gpu_wheels/: cp312 wheels of what our GPU test machine's image lacks
# (install/gpu_image_requirements.txt) and of detectron2 v0.6, prepared as install/setup_env.sh
# prepares it. Needs the package index (here); the GPU machine has none, so the folder travels
# with the repository (the device tool's `carry`; 64 MiB at most, about 10 MiB used).
# Usage: bash install/build_gpu_wheels.sh PYTHON   (a Python 3.12 with torch, e.g. .venv-gpu-image/bin/python)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${1:?usage: bash install/build_gpu_wheels.sh PYTHON (a Python 3.12 with torch installed)}"
out="$repo/.gpu_wheels"
"$py" -c 'import sys, torch; assert sys.version_info[:2] == (3, 12), sys.version' || {
    echo "[gpu_wheels] $py is not a Python 3.12 with torch (the GPU image's Python is 3.12)" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
pip=("$py" -m pip --disable-pip-version-check)
echo "[gpu_wheels] wheels of install/gpu_image_requirements.txt"
"${pip[@]}" wheel -q --no-deps -r "$repo/install/gpu_image_requirements.txt" -w "$work/wheels" 2>&1 \
    | grep -v "is ignored: it is neither" || true
echo "[gpu_wheels] detectron2 v0.6 without its C++ extension"
src="$(bash "$repo/install/detectron2_v06_source.sh" "$work" "$py")"
"${pip[@]}" wheel -q --no-deps --no-build-isolation "$src" -w "$work/wheels" 2>&1 \
    | grep -v "is ignored: it is neither" || true
ls "$work/wheels"/pb1_detectron2-0.6-*.whl >/dev/null
rm -rf "$out"
mv "$work/wheels" "$out"
size_mib=$(( $(du -sk "$out" | cut -f1) / 1024 ))
echo "[gpu_wheels] $(ls "$out" | wc -l) wheels, ${size_mib} MiB in $out"
(( size_mib < 60 )) || { echo "[gpu_wheels] more than the 64 MiB the device tool carries" >&2; exit 1; }
