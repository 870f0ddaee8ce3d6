#!/bin/bash
# The GPU checks behind README's "On a GPU": the gpu tests, then the bench sections with CUDA rows,
# each under its own time limit, logs and JSON under $OUT. For a machine that has PyTorch, Lightning,
# timm, torchmetrics and scikit-learn but not our other dependencies: put their wheels in .whl/
# (hydra-core, omegaconf, antlr4-python3-runtime, pytorch-metric-learning, faiss-cpu, openTSNE) and a
# copy of ../shared/quickdraw/simplified in .devdata/quickdraw/ (NOPIP=1 skips the install, PY= picks
# the interpreter, TESTK= selects tests, LIM_*= the limits in seconds).
#   OUT=/tmp/gpu scripts/gpu_run.sh
cd "$(dirname "$0")/.."
mkdir -p "${OUT:?set OUT to a folder for the logs}"
T0=$(date +%s); PY=${PY:-python3}
[ -n "$NOPIP" ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:$PWD/src:$PWD SKETCHEMBED_SHARED=$PWD/.devdata WANDB_MODE=offline WANDB_SILENT=true PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, lightning, timm, torchmetrics, numpy, sklearn, hydra, faiss, openTSNE; print('torch', torch.__version__, 'lightning', lightning.__version__, 'timm', timm.__version__, 'numpy', numpy.__version__, 'cpus', __import__('os').cpu_count())"
echo "setup $(( $(date +%s) - T0 )) s"
sec() { local name=$1 lim=$2; shift 2; local t=$(date +%s); timeout $lim "$@" > $OUT/$name.log 2>&1; local rc=$?; echo "== $name rc=$rc $(( $(date +%s) - t )) s"; tail -n ${TAILN:-25} $OUT/$name.log; }
TAILN=15 sec gpu_tests ${LIM_TESTS:-150} $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py ${TESTK:+-k $TESTK} --no-header -rfE --tb=short
TAILN=30 sec raster ${LIM_RASTER:-90} $PY -m bench raster --json $OUT/raster.json
TAILN=12 sec train_gpu ${LIM_TRAIN:-120} $PY -m bench train_gpu --json $OUT/train_gpu.json
TAILN=14 sec eval_gpu ${LIM_EVAL:-140} $PY -m bench eval_gpu --json $OUT/eval_gpu.json
echo "total $(( $(date +%s) - T0 )) s"
