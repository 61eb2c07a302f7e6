#!/usr/bin/env bash
# Creates .venv/ in the repository with detectron2 v0.6 (pb1-detectron2, built without its C++
# extension), its pinned stack and this project (editable). Idempotent: a second run only checks.
# Usage: bash install/setup_env.sh            (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
py="$venv/bin/python"
stamp="$venv/.cityscapes_ft_ready"
reqs="$repo/install/requirements.txt"
stub="$repo/install/detectron2_C_stub.py"
source_recipe="$repo/install/detectron2_v06_source.sh"

want="$(cat "$reqs" "$stub" "$source_recipe" "$repo/install/find_python.sh" "$0" "$repo/setup.py" | sha256sum | cut -d' ' -f1)"
source "$repo/install/find_python.sh"
if [[ -n "${PYTHON:-}" && -x "$py" ]]; then
    asked="$(find_python "$PYTHON")" || {
        echo "[setup_env] PYTHON=$PYTHON does not run (nor does a pyenv version of it)" >&2; exit 2; }
    asked="$("$asked" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    have="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [[ "$asked" != "$have" ]]; then
        echo "[setup_env] PYTHON=$PYTHON asks for Python $asked, but .venv/ has Python $have: remove .venv/" \
             "(rm -rf .venv) to make it with the Python asked for" >&2
        exit 2
    fi
fi
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && "$py" -c "import cityscapes_ft" 2>/dev/null; then
    echo "[setup_env] .venv is up to date"
    exit 0
fi

if [[ ! -x "$py" ]]; then
    python="$(find_python "${PYTHON:-python3}")" || {
        echo "[setup_env] PYTHON=${PYTHON:-python3} does not run (nor does a pyenv version of it); set PYTHON" \
             "to a Python 3.11, 3.12 or 3.13 interpreter" >&2; exit 2; }
    version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    case "$version" in 3.11|3.12|3.13) ;; *)
        echo "[setup_env] $python is Python $version; this set-up supports 3.11 (default), 3.12 and 3.13" >&2; exit 2;;
    esac
    echo "[setup_env] creating $venv with Python $version"
    rm -rf "$venv"
    "$python" -m venv "$venv"
fi
pip=("$py" -m pip --disable-pip-version-check)

echo "[setup_env] installing torch and the pinned stack (install/requirements.txt)"
"${pip[@]}" install -q -r "$reqs" 2>&1 | grep -v "is ignored: it is neither" || true
"$py" - <<'PY' || { echo "[setup_env] the pinned stack did not install: see the pip output above" >&2; exit 1; }
import sys, numpy, PIL, torch
want = "1.23.5" if sys.version_info < (3, 12) else "2.5.2"
assert numpy.__version__ == want, f"numpy {numpy.__version__}, expected {want}"
PY

# pip cannot say --no-deps for one line of a requirements file: tidecv declares opencv-python (not
# headless) and imagecorruptions opencv-python too; both only need cv2, which the headless build
# gives. Their other dependencies are pinned in requirements.txt.
"${pip[@]}" install -q --no-deps tidecv==1.0.1 imagecorruptions==1.1.2

if ! "$py" -c "import detectron2, detectron2.layers, detectron2.export" 2>/dev/null; then
    echo "[setup_env] building detectron2 v0.6 (pb1-detectron2) without its C++ extension"
    work="$(mktemp -d)"
    trap 'rm -rf "$work"' EXIT
    src="$(bash "$repo/install/detectron2_v06_source.sh" "$work" "$py")"
    "${pip[@]}" install -q --no-deps --no-build-isolation "$src"
fi

echo "[setup_env] installing cityscapes-ft (editable)"
"${pip[@]}" install -q --no-deps --no-build-isolation -e "$repo"
"$py" - <<'PY'
import detectron2, detectron2.engine, cityscapes_ft
from detectron2 import model_zoo
model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml")
print(f"[setup_env] detectron2 {detectron2.__version__}, cityscapes_ft {cityscapes_ft.__version__}: ok")
PY
echo "$want" > "$stamp"
