"""tools/analysis_tools/analyze_logs.py as a user runs it, on scalar logs in mmengine's format.

The logs are written here record by record in the layout ``tools/train.py`` produces
(``<work_dir>/<timestamp>/vis_data/scalars.json``); the end-to-end tools test trains for real, this one checks the
reading, the plotted numbers and the errors.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import TOOLS_DIR

TOOL = TOOLS_DIR / 'analysis_tools' / 'analyze_logs.py'
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def write_run(root: Path, name: str, val_maps: List[float], iters_per_epoch: int = 2,
              iter_time: float = 0.5) -> Path:
    """Write the scalar log of an epoch-based run: training records, then one validation record per epoch."""
    path = root / name / '20261121_120000' / 'vis_data' / 'scalars.json'
    path.parent.mkdir(parents=True)
    records: List[Dict] = []
    for epoch, val_map in enumerate(val_maps, start=1):
        for i in range(iters_per_epoch):
            step = (epoch - 1) * iters_per_epoch + i + 1
            records.append(dict(lr=1e-4, loss=10.0 / step, loss_cls=4.0 / step, time=iter_time * epoch,
                                data_time=0.01, epoch=epoch, iter=step, step=step))
        records.append({'coco/bbox_mAP': val_map, 'coco/bbox_mAP_50': val_map + 0.2, 'step': epoch})
    path.write_text('\n'.join(json.dumps(record) for record in records) + '\n')
    return path


def run(*args, expect_rc: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(TOOL), *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=120)
    assert done.returncode == expect_rc, done.stdout + done.stderr
    return done


def printed_series(stdout: str) -> Dict[str, List[tuple]]:
    """Parse the ``name (N points)`` blocks that plot_curve prints."""
    result: Dict[str, List[tuple]] = {}
    current = None
    for line in stdout.splitlines():
        if line.endswith(' points)'):
            current = line.rsplit(' (', 1)[0]
            result[current] = []
        elif current is not None and line.startswith('  ') and not line.strip().startswith(('epoch', 'iteration')):
            x, y = line.split()
            result[current].append((float(x), float(y)))
    return result


def test_plot_map_of_two_runs(tmp_path):
    brs = write_run(tmp_path, 'brs-detr_tiny', [0.05, 0.20, 0.34])
    co = write_run(tmp_path, 'co-detr_tiny', [0.04, 0.30, 0.56])
    out = tmp_path / 'figures' / 'map.png'
    done = run('plot_curve', brs, co, '--keys', 'coco/bbox_mAP', '--out', out, '--title', 'toy')
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    assert not list(out.parent.glob('.*'))  # no temporary file left next to the figure
    curves = printed_series(done.stdout)
    assert curves == {'brs-detr_tiny': [(1, 0.05), (2, 0.20), (3, 0.34)],
                      'co-detr_tiny': [(1, 0.04), (2, 0.30), (3, 0.56)]}
    assert 'epoch' in done.stdout


def test_plot_training_keys_against_iterations_with_legend(tmp_path):
    log = write_run(tmp_path, 'run', [0.1, 0.2], iters_per_epoch=3)
    out = tmp_path / 'loss.png'
    done = run('plot_curve', log, '--keys', 'loss', 'loss_cls', '--legend', 'total', 'cls', '--out', out)
    curves = printed_series(done.stdout)
    assert [x for x, _ in curves['total']] == [1, 2, 3, 4, 5, 6]
    assert curves['cls'][-1] == (6, pytest.approx(4.0 / 6, abs=1e-4))
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_cal_train_time(tmp_path):
    log = write_run(tmp_path, 'run', [0.1, 0.2, 0.3], iters_per_epoch=2, iter_time=0.5)
    done = run('cal_train_time', log)
    # epoch e iterates in 0.5 * e s: mean over 6 iterations (0.5, 0.5, 1, 1, 1.5, 1.5) = 1.0
    assert 'logged iterations: 6, mean 1.0000 s/iter' in done.stdout
    assert 'slowest epoch 3: 1.5000 s/iter' in done.stdout
    assert 'fastest epoch 1: 0.5000 s/iter' in done.stdout


def test_errors_name_the_problem(tmp_path):
    log = write_run(tmp_path, 'run', [0.1])
    missing = run('plot_curve', tmp_path / 'nope.json', '--out', tmp_path / 'x.png', expect_rc=2)
    assert 'nope.json: no such file' in missing.stderr

    unknown = run('plot_curve', log, '--keys', 'coco/segm_mAP', '--out', tmp_path / 'x.png', expect_rc=2)
    assert "no record has the key 'coco/segm_mAP'" in unknown.stderr and 'coco/bbox_mAP' in unknown.stderr
    assert not (tmp_path / 'x.png').exists()

    broken = tmp_path / 'broken.json'
    broken.write_text('{"loss": 1.0, "iter": 1, "step": 1}\n{"loss": \n')
    bad = run('plot_curve', broken, '--keys', 'loss', '--out', tmp_path / 'x.png', expect_rc=2)
    assert 'broken.json, line 2: not JSON' in bad.stderr

    legend = run('plot_curve', log, '--legend', 'a', 'b', '--out', tmp_path / 'x.png', expect_rc=2)
    assert '--legend: 2 names for 1 logs x 1 keys = 1 curves' in legend.stderr
