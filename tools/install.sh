#!/usr/bin/env bash
# Install the whole brs-detr stack into a virtual environment:
#   torch 2.13.0, mmengine 0.10.7, mmcv 2.1.0 compiled with its ops, mmdet 3.3.0, pycocotools, scikit-learn,
#   timm 1.0.31 with torchvision 0.28.0, the test tools, onnx + onnxruntime (optional, requirements/deploy.txt)
#   and brs-detr itself (editable).
#
# Usage: bash tools/install.sh [--no-deploy] [VENV_DIR]   (default: .venv in the repository root)
#   --no-deploy      skip the optional onnx / onnxruntime (requirements/deploy.txt: ONNX export and runtime)
#
# Environment:
#   BRS_WHEEL_CACHE  where compiled mmcv wheels are kept and reused (default ~/.cache/brs-detr/wheels)
#   FORCE_CUDA       1 to build mmcv with CUDA ops, 0 to build CPU ops only; by default CUDA ops are
#                    built when nvcc is on PATH and the installed torch is a CUDA build.
#   MAX_JOBS         parallel compile jobs for mmcv (default: number of cores)
#
# Why it is not a plain `pip install -r requirements.txt` (measured, see docs/install.md):
#   * mmcv 2.1.0 exists only as a source distribution and must be compiled against the installed torch;
#     with build isolation it cannot see torch and silently builds a wheel without ops, so we build with
#     --no-build-isolation into a wheel folder of our own and verify `import mmcv._ext` afterwards.
#   * mmcv's setup.py imports pkg_resources, which setuptools >= 81 no longer has.
#   * pip's wheel cache would reuse an ops-less wheel; we build with --no-cache-dir and key our own cache
#     by torch version and CUDA flavour.
#   * every pip call gets the constraints file so torch is never resolved unpinned.
#   * the registry's torchvision 0.28.0 (timm needs it) is a CUDA build: next to a CPU-only torch its C++ ops
#     cannot load and `import torchvision` fails. Only in that case (CPU torch, that exact error) two decorators
#     of its _meta_registrations.py are guarded so that its Python parts (all timm uses) import. A CUDA torch
#     is never patched. Re-running is safe.
set -euo pipefail

log() { printf '\n[install] %s\n' "$*"; }
die() { printf '\n[install] ERROR: %s\n' "$*" >&2; exit 1; }

WITH_DEPLOY=1
VENV_ARG=""
for arg in "$@"; do
  case "$arg" in
    -h|--help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0 ;;
    --no-deploy) WITH_DEPLOY=0 ;;
    -*) die "unknown option $arg (bash tools/install.sh --help lists the options)" ;;
    *) [ -z "$VENV_ARG" ] || die "one VENV_DIR only, got $VENV_ARG and $arg"
       VENV_ARG="$arg" ;;
  esac
done
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV_ARG:-$ROOT/.venv}"
CONSTRAINTS="$ROOT/requirements/constraints.txt"
CACHE="${BRS_WHEEL_CACHE:-$HOME/.cache/brs-detr/wheels}"
MMCV_VERSION="2.1.0"

PYTHON="${PYTHON:-python3}"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 8), sys.version' \
  || die "Python >= 3.8 is required"

if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

log "build tools and torch (pinned by $CONSTRAINTS)"
"${PIP[@]}" install -q -c "$CONSTRAINTS" --upgrade pip 'setuptools<81' wheel ninja
"${PIP[@]}" install -q -c "$CONSTRAINTS" torch

TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
TORCH_CUDA="$("$PY" -c 'import torch; print(torch.version.cuda or "")')"
if [ -z "${FORCE_CUDA:-}" ]; then
  if [ -n "$TORCH_CUDA" ] && command -v nvcc >/dev/null; then FORCE_CUDA=1; else FORCE_CUDA=0; fi
fi
if [ "$FORCE_CUDA" = "1" ]; then
  [ -n "$TORCH_CUDA" ] || die "FORCE_CUDA=1 but torch $TORCH_VERSION is a CPU build"
  command -v nvcc >/dev/null || die "FORCE_CUDA=1 but nvcc is not on PATH"
  FLAVOUR="cu${TORCH_CUDA//./}"
else
  FLAVOUR="cpu"
fi
PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEEL_DIR="$CACHE/mmcv-$MMCV_VERSION-torch$TORCH_VERSION-$FLAVOUR-$PYTAG"
mkdir -p "$WHEEL_DIR"

wheel_has_ops() {  # $1: wheel path. True when the wheel contains the compiled extension.
  "$PY" - "$1" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
sys.exit(0 if any(n.startswith('mmcv/_ext') and n.endswith(('.so', '.pyd')) for n in names) else 1)
EOF
}

MMCV_WHEEL="$(ls "$WHEEL_DIR"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
if [ -n "$MMCV_WHEEL" ] && ! wheel_has_ops "$MMCV_WHEEL"; then
  log "kept wheel $MMCV_WHEEL has no compiled ops: discarding it"
  rm -f "$MMCV_WHEEL"; MMCV_WHEEL=""
fi
if [ -z "$MMCV_WHEEL" ]; then
  log "compiling mmcv $MMCV_VERSION with ops ($FLAVOUR, torch $TORCH_VERSION); this takes several minutes"
  BUILD_TMP="$(mktemp -d)"
  MMCV_WITH_OPS=1 FORCE_CUDA="$FORCE_CUDA" MAX_JOBS="${MAX_JOBS:-$(nproc)}" CFLAGS="${CFLAGS:--g0}" \
    CXXFLAGS="${CXXFLAGS:--g0}" \
    "${PIP[@]}" wheel -c "$CONSTRAINTS" --no-build-isolation --no-cache-dir --no-deps \
      --no-binary mmcv -w "$BUILD_TMP" "mmcv==$MMCV_VERSION"
  BUILT="$(ls "$BUILD_TMP"/mmcv-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n 1 || true)"
  [ -n "$BUILT" ] || die "mmcv wheel was not built"
  wheel_has_ops "$BUILT" || die "the mmcv wheel was built WITHOUT compiled ops (no mmcv/_ext): \
check that torch is importable in $VENV and that setuptools<81 is installed"
  # Move into the cache atomically so an interrupted build never leaves a half-written wheel there.
  mv "$BUILT" "$WHEEL_DIR/.$(basename "$BUILT").tmp"
  mv "$WHEEL_DIR/.$(basename "$BUILT").tmp" "$WHEEL_DIR/$(basename "$BUILT")"
  MMCV_WHEEL="$WHEEL_DIR/$(basename "$BUILT")"
  rm -rf "$BUILD_TMP"
else
  log "reusing compiled mmcv wheel $MMCV_WHEEL"
fi

log "installing mmcv, mmengine, mmdet, pycocotools, timm, test tools and brs-detr"
"${PIP[@]}" install -q -c "$CONSTRAINTS" "$MMCV_WHEEL"
"${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$ROOT/requirements.txt" -r "$ROOT/requirements/tests.txt"
if [ "$WITH_DEPLOY" = "1" ]; then
  log "installing onnx and onnxruntime (optional: ONNX export, demo --onnx, benchmark --onnx)"
  "${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$ROOT/requirements/deploy.txt"
fi
# torchvision (timm imports it) must import next to the installed torch. The registry's torchvision is a CUDA
# build; next to a CPU-only torch its ops library cannot load, and the fake-kernel registrations of
# torchvision::nms/qnms in _meta_registrations.py then fail at import ("operator torchvision::nms does not
# exist"). Only in that case they are guarded by torchvision.extension._has_ops(), as the rest of that file
# already is. A CUDA torch is never patched; any other failure stops the install.
TV_ERR="$(mktemp)"
if ! "$PY" -c 'import torchvision' 2>"$TV_ERR"; then
  if [ -z "$TORCH_CUDA" ] && grep -q 'operator torchvision::[a-z_]* does not exist' "$TV_ERR"; then
    log "torchvision is a CUDA build next to the CPU-only torch $TORCH_VERSION: guarding its fake-kernel" \
        "registrations so that its Python parts import (its C++ ops stay unavailable; mmcv has the detection ops)"
    "$PY" - <<'PATCH'
import importlib.util
import os
import sys

MARKER = '# brs-detr tools/install.sh: guarded for a CPU-only torch'
DECORATOR = '@torch.library.register_fake("torchvision::'
GUARDED = '@_register_fake_if_ops("torchvision::'
HELPER = f'''

{MARKER}: torchvision's C++ ops did not load (a CUDA build of torchvision
# next to a CPU-only torch), so the torchvision:: operators do not exist and fake kernels cannot be registered.
def _register_fake_if_ops(op_name):
    def wrapper(fn):
        if torchvision.extension._has_ops():
            return torch.library.register_fake(op_name)(fn)
        return fn

    return wrapper
'''
ANCHOR = '\n\n@register_meta('

spec = importlib.util.find_spec('torchvision')
path = os.path.join(list(spec.submodule_search_locations)[0], '_meta_registrations.py')
with open(path, encoding='utf-8') as file:
    source = file.read()
if MARKER in source:
    sys.exit(f'[install] ERROR: {path} is already patched, yet torchvision does not import')
if DECORATOR not in source or ANCHOR not in source:
    sys.exit(f'[install] ERROR: {path} does not have the layout tools/install.sh knows how to patch; install a '
             f'torchvision build that matches your torch (e.g. from https://download.pytorch.org/whl/cpu)')
count = source.count(DECORATOR)
source = source.replace(ANCHOR, HELPER + ANCHOR, 1).replace(DECORATOR, GUARDED)
tmp = f'{path}.brs-detr.tmp'
with open(tmp, 'w', encoding='utf-8') as file:
    file.write(source)
os.replace(tmp, path)  # atomic: an interrupted run leaves the original file
print(f'[install] guarded {count} fake-kernel registrations in {path}')
PATCH
    if ! "$PY" -c 'import torchvision' 2>"$TV_ERR"; then
      cat "$TV_ERR" >&2; rm -f "$TV_ERR"
      die "torchvision still does not import after the CPU patch (see above)"
    fi
  else
    cat "$TV_ERR" >&2; rm -f "$TV_ERR"
    die "import torchvision fails next to torch $TORCH_VERSION (CUDA: ${TORCH_CUDA:-none}); see the error above"
  fi
fi
rm -f "$TV_ERR"
"${PIP[@]}" install -q -c "$CONSTRAINTS" --no-build-isolation --no-deps -e "$ROOT"

log "verifying the installation"
"$PY" - <<'EOF'
import sys
import torch, mmengine, mmcv, mmdet, pycocotools, sklearn.mixture  # noqa: F401
try:
    import mmcv._ext  # noqa: F401
except ImportError as exc:
    sys.exit(f'[install] ERROR: mmcv was installed without its compiled ops: {exc}')
from mmcv.ops import nms, RoIAlign, MultiScaleDeformableAttention  # noqa: F401
import torchvision, timm
from mmengine.utils.dl_utils import collect_env
collect_env()  # what every mmengine Runner logs when it starts; it imports torchvision
import brs_detr
from mmdet.registry import MODELS
assert MODELS.get('BucketedRankSortLoss') is not None, 'brs_detr did not register its losses'
backbone = MODELS.build(dict(type='TimmBackbone', model_name='test_convnext', out_indices=(1, 2, 3)))
assert [f.shape[1] for f in backbone(torch.zeros(1, 3, 64, 64))] == backbone.out_channels
cuda = torch.cuda.is_available()
tv_ops = 'with' if torchvision.extension._has_ops() else 'without'
print(f'[install] OK: torch {torch.__version__} (cuda available: {cuda}), mmengine {mmengine.__version__}, '
      f'mmcv {mmcv.__version__} with ops, mmdet {mmdet.__version__}, timm {timm.__version__}, '
      f'torchvision {torchvision.__version__} ({tv_ops} its C++ ops), brs_detr {brs_detr.__version__}')
EOF
if [ "$WITH_DEPLOY" = "1" ]; then
  "$PY" -c 'import onnx, onnxruntime as ort; print(f"[install] OK: onnx {onnx.__version__}, onnxruntime {ort.__version__}")'
fi
log "done. Activate with: source $VENV/bin/activate"
