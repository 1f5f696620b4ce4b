"""Convergence check of BRS-DETR and RS-DETR (tiny configs) on a toy COCO set, run as a user runs the tools.

An untrained tiny model (seeded, ``init_weights``) is evaluated with tools/test.py; then each of the two tiny
configs is trained with tools/train.py for a bounded number of iterations and evaluated at the end of training.
The trained bbox mAP must be well above the untrained one and the training loss must fall.

The query head keeps its top-``max_per_img`` predictions without a score threshold, so early, uncalibrated
ranking-loss scores still give COCO predictions to score (the auxiliary heads are not evaluated).

Measured on 2 CPU cores (32 training / 8 validation images, 96 iterations of 2 images, lr 5e-4): untrained
bbox mAP 0.000; BRS-DETR 0.053, RS-DETR 0.064; mean loss 54.8 -> 25.6 (BRS) and 55.3 -> 25.5 (RS) from the
first to the last epoch; 73-97 s in all (see docs/brs_detr.md).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from mmengine.config import Config

from conftest import CONFIGS_DIR, TOOLS_DIR

pytestmark = pytest.mark.slow

BRS_CONFIG = CONFIGS_DIR / 'brs_detr' / 'brs-detr_r18-tiny_1xb2-1e_toy-coco.py'
RS_CONFIG = CONFIGS_DIR / 'brs_detr' / 'rs-detr_r18-tiny_1xb2-1e_toy-coco.py'
NUM_TRAIN = 32
NUM_VAL = 8
BATCH = 2  # the tiny configs' batch size
EPOCHS = 6  # 6 x 16 = 96 iterations
LR = 5e-4
TOOL_TIMEOUT_S = 400
#: The trained mAP must exceed this absolute floor and the untrained mAP by ``MIN_GAIN``.
MIN_MAP = 0.03
MIN_GAIN = 0.03
#: The mean logged loss of the last epoch must be below this fraction of the first epoch's.
MAX_LOSS_RATIO = 0.85
MAP_PATTERN = re.compile(r'coco/bbox_mAP: (-?\d+\.\d+)')
LOSS_PATTERN = re.compile(r'Epoch\(train\)\s+\[(\d+)\].*?\s{2}loss: (\d+\.\d+)')


def run_tool(cmd: List, cwd: Path, env: Dict[str, str]) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=TOOL_TIMEOUT_S)
    if done.returncode != 0:
        pytest.fail(f'{" ".join(map(str, cmd))} exited with {done.returncode}:\n{done.stdout[-6000:]}')
    return done.stdout


def final_map(output: str) -> float:
    values = MAP_PATTERN.findall(output)
    assert values, f'no coco/bbox_mAP in the output:\n{output[-4000:]}'
    return float(values[-1])


def losses_per_epoch(output: str) -> Dict[int, List[float]]:
    per_epoch: Dict[int, List[float]] = {}
    for epoch, value in LOSS_PATTERN.findall(output):
        per_epoch.setdefault(int(epoch), []).append(float(value))
    return per_epoch


@pytest.fixture(scope='module')
def workspace(tmp_path_factory, make_toy_coco_module) -> Path:
    """A directory holding data/toy_coco (the configs' relative data_root) with 32 train / 8 val images."""
    root = tmp_path_factory.mktemp('brs_detr_convergence')
    make_toy_coco_module.make_toy_coco(str(root / 'data' / 'toy_coco'), num_train=NUM_TRAIN, num_val=NUM_VAL,
                                       img_size=(128, 128), seed=0)
    return root


@pytest.fixture(scope='module')
def untrained_map(workspace, tool_env, python_exe) -> float:
    """bbox mAP of the untrained tiny model (same architecture for BRS and RS), through tools/test.py."""
    import brs_detr  # noqa: F401
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(str(BRS_CONFIG))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    checkpoint = workspace / 'untrained.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    output = run_tool([python_exe, TOOLS_DIR / 'test.py', BRS_CONFIG, checkpoint, '--work-dir',
                       workspace / 'untrained'], workspace, tool_env)
    return final_map(output)


@pytest.mark.parametrize('config', [BRS_CONFIG, pytest.param(RS_CONFIG, marks=pytest.mark.long)],
                         ids=['brs-detr', 'rs-detr'])
def test_tiny_model_learns_the_toy_set(config, workspace, untrained_map, tool_env, python_exe):
    work_dir = workspace / config.stem
    output = run_tool([
        python_exe, TOOLS_DIR / 'train.py', config, '--work-dir', work_dir, '--cfg-options',
        f'train_cfg.max_epochs={EPOCHS}', f'train_cfg.val_interval={EPOCHS}', 'default_hooks.logger.interval=4',
        f'optim_wrapper.optimizer.lr={LR}', f'param_scheduler.0.end={EPOCHS}',
        f'param_scheduler.0.milestones=[{EPOCHS}]', f'default_hooks.checkpoint.interval={EPOCHS}',
        'randomness.seed=0'
    ], workspace, tool_env)
    trained_map = final_map(output)
    per_epoch = losses_per_epoch(output)
    assert sorted(per_epoch) == list(range(1, EPOCHS + 1)), per_epoch
    first = sum(per_epoch[1]) / len(per_epoch[1])
    last = sum(per_epoch[EPOCHS]) / len(per_epoch[EPOCHS])
    print(f'\n{config.stem}: untrained bbox mAP {untrained_map:.4f}, after {EPOCHS * NUM_TRAIN // BATCH} '
          f'iterations {trained_map:.4f}; mean loss epoch 1 {first:.2f} -> epoch {EPOCHS} {last:.2f}')
    assert last < MAX_LOSS_RATIO * first, per_epoch
    assert trained_map >= MIN_MAP, (untrained_map, trained_map)
    assert trained_map >= untrained_map + MIN_GAIN, (untrained_map, trained_map)
