#!/usr/bin/env bash
# The GPU check in one command (tools/gpu_check.py says what it measures, within 8 minutes):
#   bash tools/gpu_check.sh OUT            on the GPU machine: its image's python3, plus the wheels
#                                          of .gpu_wheels/ (bash install/build_gpu_wheels.sh here)
#   bash tools/gpu_check.sh --dry-run OUT  here, on CPU at tiny sizes, in .venv-gpu-image/: Python
#                                          3.12 with the image's packages (install/gpu_image_stand_in.txt)
# Both install the wheels the same way (no index, no dependencies: the image's packages stay) and
# write OUT/gpu_check.json.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dry=()
if [[ "${1:-}" == "--dry-run" ]]; then dry=(--dry-run); shift; fi
out="${1:?usage: bash tools/gpu_check.sh [--dry-run] OUT}"
wheels="$repo/.gpu_wheels"

if (( ${#dry[@]} )); then
    env="$repo/.venv-gpu-image"
    py="$env/bin/python"
    if [[ ! -f "$env/.ready" ]]; then
        source "$repo/install/find_python.sh"
        python="$(find_python "${PYTHON:-python3.12}")" || python=""
        [[ -n "$python" ]] && "$python" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null || {
            echo "[gpu_check] the dry run needs Python 3.12 (the GPU image's): set PYTHON=/path/to/python3.12" >&2; exit 2; }
        echo "[gpu_check] creating $env: Python 3.12 with the GPU image's packages"
        rm -rf "$env"
        "$python" -m venv "$env"
        "$py" -m pip install -q --disable-pip-version-check -r "$repo/install/gpu_image_stand_in.txt" 2>&1 \
            | grep -v "is ignored: it is neither" || true
        touch "$env/.ready"
    fi
    [[ -d "$wheels" ]] || bash "$repo/install/build_gpu_wheels.sh" "$py"
else
    py="${PYTHON:-python3}"
    [[ -d "$wheels" ]] || {
        echo "[gpu_check] no .gpu_wheels/ here: build it with 'bash install/build_gpu_wheels.sh PYTHON3.12' where" \
             "the package index is reachable and bring it along (device tool: carry [\".gpu_wheels\"])" >&2; exit 2; }
fi

echo "[gpu_check] installing the carried wheels into $("$py" -c 'import sys; print(sys.prefix)')"
"$py" -m pip install -q --disable-pip-version-check --no-index --no-deps --find-links "$wheels" \
    -r "$repo/install/gpu_image_requirements.txt" pb1-detectron2==0.6
PYTHONPATH="$repo/projects${PYTHONPATH:+:$PYTHONPATH}" "$py" "$repo/tools/gpu_check.py" --output "$out" "${dry[@]}"
