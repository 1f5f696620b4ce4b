"""End-to-end runs of the tools as a user runs them (subprocess, CPU, 2 processes over gloo).

On the toy COCO set (8 training images: 2 iterations per epoch with 2 processes x 2 images):
train 1 epoch with tools/dist_train.sh, resume it with ``--resume`` for a 2nd epoch, evaluate the checkpoint with
tools/test.py (COCO bbox mAP from pycocotools, ``--out`` pickle, ``--show-dir`` images without a display) and with
tools/dist_test.sh (same mAP as one process). Bad input must fail with a clear message.
"""
from __future__ import annotations

import pickle
import re
import shutil
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import torch

from conftest import CONFIGS_DIR, TOOLS_DIR, TOY_NUM_TRAIN, TOY_NUM_VAL, python_warnings

CONFIG = CONFIGS_DIR / 'toy' / 'atss_r18-tiny_2xb2-12e_toy-coco.py'
NUM_PROCS = 2
BATCH_PER_PROC = 2
ITERS_PER_EPOCH = TOY_NUM_TRAIN // (NUM_PROCS * BATCH_PER_PROC)
TOOL_TIMEOUT_S = 300
MAP_PATTERN = re.compile(r'coco/bbox_mAP: (-?\d+\.\d+)')
# After a few iterations from scratch the scores are still near the focal-loss prior (0.01), below the config's
# score_thr (0.05): keep every box so that COCO evaluation always has predictions to score.
KEEP_ALL_BOXES = 'model.test_cfg.score_thr=0.0'


def run_tool(cmd: List[str], cwd: Path, env: Dict[str, str], expect_rc: Optional[int] = 0) -> str:
    """Run a tool and return its combined stdout/stderr; fail with the output tail on an unexpected exit code."""
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=TOOL_TIMEOUT_S)
    if expect_rc is not None and done.returncode != expect_rc:
        pytest.fail(f'{" ".join(map(str, cmd))} exited with {done.returncode}, expected {expect_rc}:\n'
                    f'{done.stdout[-6000:]}')
    assert python_warnings(done.stdout) == [], f'{" ".join(map(str, cmd))} printed warnings'
    return done.stdout


def parse_map(output: str) -> float:
    values = MAP_PATTERN.findall(output)
    assert values, f'no coco/bbox_mAP in the output:\n{output[-4000:]}'
    return float(values[-1])


@pytest.fixture(scope='module')
def runs(toy_coco_root, tmp_path_factory, tool_env, free_port) -> Dict:
    """Train 1 epoch with dist_train.sh, then resume for a 2nd one; return the work_dir and both outputs."""
    cwd = toy_coco_root.parents[1]  # configs read data/toy_coco/ relative to the working directory
    work_dir = tmp_path_factory.mktemp('e2e') / 'work_dir'
    common = ['default_hooks.logger.interval=1', KEEP_ALL_BOXES]
    first = run_tool(['bash', TOOLS_DIR / 'dist_train.sh', CONFIG, NUM_PROCS, '--work-dir', work_dir,
                      '--cfg-options', 'train_cfg.max_epochs=1', *common], cwd, dict(tool_env, PORT=str(free_port())))
    resumed = run_tool(['bash', TOOLS_DIR / 'dist_train.sh', CONFIG, NUM_PROCS, '--work-dir', work_dir, '--resume',
                        '--cfg-options', 'train_cfg.max_epochs=2', *common], cwd,
                       dict(tool_env, PORT=str(free_port())))
    return dict(work_dir=work_dir, first=first, resumed=resumed, cwd=cwd)


@pytest.mark.slow
def test_dist_train_then_resume(runs):
    work_dir, first, resumed = runs['work_dir'], runs['first'], runs['resumed']
    if not torch.cuda.is_available():
        assert 'using the gloo distributed backend instead of nccl' in first
    assert 'Distributed training: True' in first
    assert f'Epoch(train) [1][{ITERS_PER_EPOCH}/{ITERS_PER_EPOCH}]' in first
    assert 'Epoch(train) [2]' not in first
    assert 'coco/bbox_mAP:' in first  # validation at the end of the run

    # the resumed run continues after epoch 1 (iteration 2) instead of starting over
    assert f'Auto resumed from the latest checkpoint {work_dir / "epoch_1.pth"}' in resumed
    assert f'resumed epoch: 1, iter: {ITERS_PER_EPOCH}' in resumed
    assert 'Epoch(train) [1]' not in resumed
    assert f'Epoch(train) [2][{ITERS_PER_EPOCH}/{ITERS_PER_EPOCH}]' in resumed
    assert (work_dir / 'epoch_1.pth').is_file() and (work_dir / 'epoch_2.pth').is_file()
    assert (work_dir / 'last_checkpoint').read_text().strip() == 'epoch_2.pth'  # relative to the work_dir


@pytest.mark.slow
def test_analyze_logs_reads_the_training_logs(runs, tool_env):
    """The mAP curve of the run (epoch 1 by the first run, epoch 2 by the resumed one) is what the runs printed."""
    work_dir, first, resumed = runs['work_dir'], runs['first'], runs['resumed']
    logs = sorted(work_dir.glob('*/vis_data/scalars.json'))  # one timestamped directory per run, in order
    assert len(logs) == 2
    out_png = work_dir.parent / 'map.png'
    output = run_tool([tool_env['PYTHON'], TOOLS_DIR / 'analysis_tools' / 'analyze_logs.py', 'plot_curve', *logs,
                       '--legend', 'first', 'resumed', '--out', out_png], runs['cwd'], tool_env)
    assert f'first (1 points)\n      epoch  value\n          1  {parse_map(first):.4f}' in output
    assert f'resumed (1 points)\n      epoch  value\n          2  {parse_map(resumed):.4f}' in output
    assert out_png.read_bytes().startswith(b'\x89PNG')


@pytest.mark.slow
def test_test_py_map_out_and_show_dir(runs, tool_env):
    work_dir, cwd, env = runs['work_dir'], runs['cwd'], tool_env
    test_dir = work_dir.parent / 'test_single'
    out_pkl = work_dir.parent / 'preds' / 'results.pkl'
    output = run_tool([env['PYTHON'], TOOLS_DIR / 'test.py', CONFIG, work_dir / 'epoch_2.pth', '--work-dir', test_dir,
                       '--out', out_pkl, '--show-dir', 'vis', '--cfg-options', KEEP_ALL_BOXES], cwd, env)
    bbox_map = parse_map(output)
    assert 0.0 <= bbox_map <= 1.0
    assert 'Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]' in output  # pycocotools
    runs['single_map'] = bbox_map

    with open(out_pkl, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == TOY_NUM_VAL
    assert sorted(r['img_id'] for r in results) == list(range(1, TOY_NUM_VAL + 1))
    for result in results:
        pred = result['pred_instances']
        assert pred['bboxes'].shape[-1] == 4 and len(pred['scores']) == len(pred['labels']) == len(pred['bboxes'])
    assert sorted(p.name for p in out_pkl.parent.iterdir()) == ['results.pkl']  # no temporary file left

    painted = sorted(test_dir.glob('*/vis/*.png'))
    assert [p.name for p in painted] == [f'{i:06d}.png' for i in range(1, TOY_NUM_VAL + 1)]


@pytest.mark.slow
def test_dist_test_matches_single_process(runs, tool_env, free_port):
    work_dir, cwd = runs['work_dir'], runs['cwd']
    output = run_tool(['bash', TOOLS_DIR / 'dist_test.sh', CONFIG, work_dir / 'epoch_2.pth', NUM_PROCS, '--work-dir',
                       work_dir.parent / 'test_dist', '--cfg-options', KEEP_ALL_BOXES], cwd,
                      dict(tool_env, PORT=str(free_port())))
    assert 'Distributed training: True' in output
    bbox_map = parse_map(output)
    if 'single_map' in runs:
        assert bbox_map == pytest.approx(runs['single_map'], abs=1e-4)


@pytest.mark.slow
def test_test_py_refuses_untrusted_checkpoint(runs, tool_env, tmp_path):
    """A Runner checkpoint copied out of its work_dir needs full unpickling but is not trusted: clear refusal."""
    copied = tmp_path / 'downloads' / 'model.pth'
    copied.parent.mkdir()
    shutil.copyfile(runs['work_dir'] / 'epoch_1.pth', copied)
    env = {k: v for k, v in tool_env.items() if k != 'BRS_DETR_TRUSTED_DIRS'}
    output = run_tool([env['PYTHON'], TOOLS_DIR / 'test.py', CONFIG, copied, '--work-dir', tmp_path / 'wd'],
                      runs['cwd'], env, expect_rc=2)
    assert f'test.py: error: Refusing to load checkpoint {copied}' in output
    assert 'Traceback' not in output and 'coco/bbox_mAP' not in output


BAD_INPUTS = [
    pytest.param(['python', 'train.py', 'missing_config.py'], 'config file not found: missing_config.py',
                 id='train-missing-config'),
    pytest.param(['python', 'train.py', CONFIG, '--resume', 'missing.pth'],
                 'resume checkpoint file not found: missing.pth', id='train-missing-resume-checkpoint'),
    pytest.param(['python', 'test.py', 'missing_config.py', 'missing.pth'], 'config file not found: missing_config.py',
                 id='test-missing-config'),
    pytest.param(['python', 'test.py', CONFIG, 'missing.pth'], 'checkpoint file not found: missing.pth',
                 id='test-missing-checkpoint'),
    pytest.param(['python', 'test.py', CONFIG, 'missing.pth', '--out', 'results.json'],
                 '--out must name a .pkl or .pickle file', id='test-out-not-pickle'),
    pytest.param(['bash', 'dist_train.sh', 'missing_config.py', '2'], 'config file not found: missing_config.py',
                 id='dist_train-missing-config'),
    pytest.param(['bash', 'dist_train.sh', CONFIG, 'two'], 'GPUS must be a positive integer',
                 id='dist_train-bad-gpus'),
    pytest.param(['bash', 'dist_test.sh', CONFIG, 'missing.pth', '2'], 'checkpoint file not found: missing.pth',
                 id='dist_test-missing-checkpoint'),
    pytest.param(['bash', 'slurm_train.sh', 'partition', 'job', 'missing_config.py', 'work_dir'],
                 'config file not found: missing_config.py', id='slurm_train-missing-config'),
    pytest.param(['bash', 'slurm_test.sh', 'partition', 'job', CONFIG, 'missing.pth'],
                 'checkpoint file not found: missing.pth', id='slurm_test-missing-checkpoint'),
]


@pytest.mark.parametrize('cmd, message', BAD_INPUTS)
def test_bad_input_fails_clearly(cmd, message, tmp_path, tool_env):
    runner, tool, *args = cmd
    runner = tool_env['PYTHON'] if runner == 'python' else runner
    extra = [] if runner == 'bash' else ['--work-dir', tmp_path / 'wd']
    output = run_tool([runner, TOOLS_DIR / tool, *args, *extra], tmp_path, tool_env, expect_rc=2)
    assert message in output
    assert 'Traceback' not in output


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message given on a machine without CUDA')
def test_amp_without_cuda_fails_clearly(tmp_path, tool_env):
    output = run_tool([tool_env['PYTHON'], TOOLS_DIR / 'train.py', CONFIG, '--amp', '--work-dir', tmp_path / 'wd'],
                      tmp_path, tool_env, expect_rc=2)
    assert '--amp needs a CUDA' in output and 'Traceback' not in output
