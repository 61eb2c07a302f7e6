#!/usr/bin/env bash
# Downloads detectron2 v0.6's source (pb1-detectron2 0.6 from PyPI) into WORK and prepares it to be
# built without its C++ extension on torch 2 with either numpy stack; prints the source folder.
# Used by install/setup_env.sh (pip install) and install/build_gpu_wheels.sh (pip wheel).
# Usage: bash install/detectron2_v06_source.sh WORK PYTHON   (PYTHON: the interpreter whose pip downloads)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$1"
py="$2"
stub="$repo/install/detectron2_C_stub.py"
pip=("$py" -m pip --disable-pip-version-check)
{
# Downloading an sdist runs its setup.py, which imports torch: no build isolation (torch is in the venv).
"${pip[@]}" download -q --no-deps --no-build-isolation --no-binary :all: pb1-detectron2==0.6 \
    -d "$work" 2>&1 | grep -v "is ignored: it is neither" || true
tar -xzf "$work"/pb1-detectron2-0.6.tar.gz -C "$work"
src="$work/pb1-detectron2-0.6"
# 1. No C++ sources in the sdist: build no extension, and answer `from detectron2 import _C`
#    with a stub that names the missing extension when a compiled op is used.
grep -q "ext_modules=get_extensions()," "$src/setup.py"
sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$src/setup.py"
cp "$stub" "$src/detectron2/_C.py"
# 2. setup.py installs the model-zoo YAMLs from ./configs, which the sdist keeps inside the
#    package instead: put them where setup.py looks.
mv "$src/detectron2/model_zoo/configs" "$src/configs"
# 3. Do not install the sdist's top-level `tools` package into site-packages.
sed -i 's/exclude=("configs", "tests\*")/exclude=("configs", "tests*", "tools", "tools.*")/' \
    "$src/setup.py"
# 4. numpy 2 and Pillow 10 (the stack of Python 3.12+) removed names v0.6 uses: the numpy
#    aliases of builtins (np.bool, np.int, np.float, np.str), Image.LINEAR (an alias of
#    BILINEAR), and np.array(..., copy=False) where a copy is needed. Same meaning, new spelling;
#    harmless on the Python 3.11 stack, so applied to every build.
find "$src/detectron2" -name '*.py' -print0 | xargs -0 sed -i -E \
    -e 's/\bnp\.(bool|int|float|str)\b([^_0-9]|$)/\1\2/g' \
    -e 's/Image\.LINEAR\b/Image.BILINEAR/g' \
    -e 's/np\.array\(mask, copy=False\)/np.asarray(mask)/'
# 5. detectron2.export imports its caffe2 exporter (.api) first, and torch 2 ships no caffe2, so
#    the tracing/TorchScript half (and detectron2.utils.analysis, which imports it) fails too:
#    import .api only where caffe2 exists, as upstream does since 2022.
grep -q "^from .api import \*$" "$src/detectron2/export/__init__.py"
sed -i 's/^from .api import \*$/try:\n    import caffe2  # noqa: F401\nexcept ImportError:\n    pass\nelse:\n    from .api import */' \
    "$src/detectron2/export/__init__.py"
} >&2
echo "$src"
