"""tools/benchmark_train.py run as a user runs it, on the tiny Co-Deformable-DETR config."""
import os.path as osp
import re
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_CONFIG = 'configs/co_deformable_detr/co_deformable_detr_r18-tiny_1xb2-1e_toy-coco.py'


def run_benchmark(*args):
    return subprocess.run(
        [sys.executable, 'tools/benchmark_train.py', TINY_CONFIG, *args],
        capture_output=True, text=True, cwd=ROOT)


def test_benchmark_train_prints_markdown_table():
    result = run_benchmark('--iters', '2', '--warmup', '1', '--img-size', '64', '96',
                           '--batch', '2')
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith('| configs/')]
    assert len(rows) == 1
    cells = [cell.strip() for cell in rows[0].strip('|').split('|')]
    assert cells[0] == TINY_CONFIG
    assert cells[1] == '1.69M'
    assert float(cells[2]) > 0 and float(cells[3]) > 0
    # 10 loss modules: query head 3, RPN 2, RoI head 2, ATSS 3
    share = re.fullmatch(r'([\d.]+)% \((\d+) modules\)', cells[4])
    assert share and 0 < float(share.group(1)) < 100 and share.group(2) == '10'
    assert 'batch 2, 64x96, cpu' in result.stdout


def test_benchmark_train_rejects_bad_arguments():
    result = run_benchmark('--iters', '0')
    assert result.returncode == 2
    assert '--iters' in result.stderr


@pytest.mark.slow
def test_train_and_test_tiny_co_detr_end_to_end(tmp_path):
    """tools/train.py then tools/test.py on a 4-image toy COCO set."""
    data_root = tmp_path / 'toy_coco'
    work_dir = tmp_path / 'work_dir'
    made = subprocess.run(
        [sys.executable, 'tools/make_toy_coco.py', str(data_root), '--num-train', '4',
         '--num-val', '2'], capture_output=True, text=True, cwd=ROOT)
    assert made.returncode == 0, made.stderr[-3000:]
    ann = data_root / 'annotations' / 'instances_val.json'
    options = [
        f'train_dataloader.dataset.data_root={data_root}/',
        f'val_dataloader.dataset.data_root={data_root}/',
        f'test_dataloader.dataset.data_root={data_root}/',
        f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}'
    ]
    trained = subprocess.run(
        [sys.executable, 'tools/train.py', TINY_CONFIG, '--work-dir', str(work_dir),
         '--cfg-options', *options], capture_output=True, text=True, cwd=ROOT)
    assert trained.returncode == 0, trained.stderr[-3000:]
    checkpoint = work_dir / 'epoch_1.pth'
    assert checkpoint.is_file()
    tested = subprocess.run(
        [sys.executable, 'tools/test.py', TINY_CONFIG, str(checkpoint), '--work-dir',
         str(work_dir), '--cfg-options', *options, 'model.eval_module=one-stage'],
        capture_output=True, text=True, cwd=ROOT)
    assert tested.returncode == 0, tested.stderr[-3000:]
    assert 'coco/bbox_mAP' in tested.stdout + tested.stderr
