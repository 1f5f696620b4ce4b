"""tools/benchmark_train.py and brs_detr.benchmarks.train: ranking-loss timing (forward and backward), peak
memory and the multi-config comparison table."""
import re
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from brs_detr.models.losses import BucketedRankSortLoss
from brs_detr.models.losses.ranking_loss import _RankingLossFunction
from brs_detr.benchmarks import train as train_benchmark
from brs_detr.benchmarks.memory import PeakMemoryMeter
from brs_detr.benchmarks.timers import RankingLossTimer
from conftest import REPO_ROOT, load_tool_module

CO_DETR_TINY = 'configs/co_deformable_detr/co_deformable_detr_r18-tiny_1xb2-1e_toy-coco.py'
SLEEP_S = 0.05

#: The tiny Co-DETR with BRS in its auxiliary heads (RPN, RoI, ATSS), written to a temporary file so that the test
#: does not depend on other configs; the samplers are switched off with --cfg-options.
RANK_AUX_CONFIG = f"""
_base_ = '{REPO_ROOT / CO_DETR_TINY}'
rank_loss = dict(type='BucketedRankSortLoss', delta=0.5)
model = dict(
    rpn_head=dict(type='RankBasedRPNHead', reg_decoded_bbox=True,
                  loss_cls=dict(_delete_=True, loss_weight=1.0, **rank_loss),
                  loss_bbox=dict(_delete_=True, type='GIoULoss', loss_weight=1.0)),
    roi_head=[dict(
        type='CoStandardRoIHead',
        bbox_roi_extractor=dict(type='SingleRoIExtractor',
                                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                                out_channels=64, featmap_strides=[8, 16, 32, 64], finest_scale=112),
        bbox_head=dict(type='RankBasedShared2FCBBoxHead', in_channels=64, fc_out_channels=128, roi_feat_size=7,
                       num_classes=3, reg_decoded_bbox=True,
                       bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                                       target_stds=[0.1, 0.1, 0.2, 0.2]),
                       loss_cls=dict(loss_weight=5.0, **rank_loss),
                       loss_bbox=dict(type='GIoULoss', loss_weight=1.0)))],
    aux_bbox_head=[dict(
        type='CoRankBasedATSSHead', num_classes=3, in_channels=64, stacked_convs=1, feat_channels=64,
        reg_decoded_bbox=True,
        anchor_generator=dict(type='AnchorGenerator', ratios=[1.0], octave_base_scale=8, scales_per_octave=1,
                              strides=[8, 16, 32, 64, 128]),
        bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(loss_weight=5.0, **rank_loss), loss_bbox=dict(type='GIoULoss', loss_weight=1.0))])
"""


@pytest.fixture(scope='module')
def tool():
    return load_tool_module('benchmark_train')


def parse_rows(stdout: str):
    rows = {}
    for line in stdout.splitlines():
        if line.startswith('| ') and not line.startswith('| config |'):
            cells = [cell.strip() for cell in line.strip('|').split('|')]
            rows[cells[0]] = cells
    return rows


class SlowRankingLoss(nn.Module):
    """A model whose only op is a BRS loss on a linear layer's outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)
        self.loss_cls = BucketedRankSortLoss(delta=0.5)

    def forward(self, inputs, targets):
        return self.loss_cls(self.linear(inputs).reshape(-1), targets)


def test_ranking_loss_timer_times_forward_and_backward(monkeypatch):
    """The timer's forward covers the loss module, its backward the Function's backward, nothing else."""
    compute = BucketedRankSortLoss.compute
    backward = _RankingLossFunction.backward

    def slow_compute(self, logits, targets):
        time.sleep(SLEEP_S)
        return compute(self, logits, targets)

    def slow_backward(ctx, *grads):
        time.sleep(2 * SLEEP_S)
        return backward(ctx, *grads)

    monkeypatch.setattr(BucketedRankSortLoss, 'compute', slow_compute)
    monkeypatch.setattr(_RankingLossFunction, 'backward', staticmethod(slow_backward))
    model = SlowRankingLoss()
    timer = RankingLossTimer(model, torch.device('cpu'))
    assert timer.names == ['loss_cls']
    inputs = torch.randn(50, 4)
    targets = torch.zeros(50)
    targets[:5] = torch.linspace(0.2, 1.0, 5)
    losses = model(inputs, targets)
    assert timer.forward_calls == 1 and SLEEP_S <= timer.forward < 2 * SLEEP_S + 0.5
    assert timer.backward == 0
    time.sleep(SLEEP_S)  # time outside the loss is not counted
    sum(losses.values()).backward()
    assert timer.backward_calls == 1 and 2 * SLEEP_S <= timer.backward < 2 * SLEEP_S + 0.5
    assert model.linear.weight.grad.abs().sum() > 0
    timer.reset()
    assert timer.total == 0
    timer.remove()
    assert _RankingLossFunction.__dict__['backward'].__func__ is slow_backward  # restored
    model(inputs, targets)
    assert timer.forward_calls == 0  # hooks removed


def test_benchmark_compares_configs_with_ranking_share(tmp_path):
    config = tmp_path / 'co_detr_tiny_rank_aux.py'
    config.write_text(RANK_AUX_CONFIG)
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, 'tools/benchmark_train.py', CO_DETR_TINY, str(config), '--iters', '1', '--warmup', '1',
         '--img-size', '64', '96', '--metric', 'cpu', '--threads', '1', '--cfg-options',
         'model.train_cfg.1.rpn.sampler.type=PseudoSampler', 'model.train_cfg.1.rcnn.sampler.num=1000000000',
         'model.train_cfg.1.rcnn.sampler.pos_fraction=1.0'],
        capture_output=True, text=True, cwd=REPO_ROOT)
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'batch 1, 64x96, cpu' in result.stdout and 'load average' in result.stdout
    header = next(line for line in result.stdout.splitlines() if line.startswith('| config'))
    assert 'ranking-loss share (fwd + bwd)' in header
    assert header.rstrip().endswith('| ratio to first | peak memory MiB (+ over model & optimizer) | '
                                    'memory ratio to first |')
    assert 'peak memory: process peak RSS during the timed iterations' in result.stdout
    assert '1 threads' in result.stdout and 'times in CPU seconds of the process' in result.stdout
    rows = parse_rows(result.stdout)
    assert list(rows) == [CO_DETR_TINY, str(config)]
    focal, ranked = rows[CO_DETR_TINY], rows[str(config)]
    assert focal[5] == '- (no ranking loss)' and focal[7] == '1.00'
    share = re.fullmatch(r'([\d.]+)% \((\d+) modules\)', ranked[5])
    assert share and 0 < float(share.group(1)) < 100
    assert share.group(2) == '3'  # RPN, RoI and ATSS losses
    fwd, bwd = (float(value) for value in ranked[6].split('/'))
    assert fwd > 0 and bwd > 0
    ratio = float(ranked[7])
    assert ratio == pytest.approx(float(ranked[2]) / float(focal[2]), abs=0.01)
    peaks = {}
    for name, row in rows.items():
        memory = re.fullmatch(r'(\d+) \(\+(\d+)\)', row[8])
        assert memory, row[8]
        peak, extra = int(memory.group(1)), int(memory.group(2))
        assert 0 < extra < peak  # the iterations allocate on top of the model; the process holds more than that
        peaks[name] = peak
    assert float(focal[9]) == 1.0
    assert float(ranked[9]) == pytest.approx(peaks[str(config)] / peaks[CO_DETR_TINY], abs=0.01)
    # per-iteration log on stderr names the ranking-loss forward and backward times
    assert re.search(r'iteration 2 \(timed\) [\d.]+ s, ranking losses [\d.]+ ms fwd \+ [\d.]+ ms bwd',
                     result.stderr)
    print(f'benchmark run: {elapsed:.1f} s')


def test_no_ranking_timer_option(tool, capsys):
    """In-process run without any timer: no share columns, the Function's backward untouched."""
    backward = _RankingLossFunction.__dict__['backward']
    tool.main([str(REPO_ROOT / CO_DETR_TINY), '--iters', '1', '--warmup', '0', '--img-size', '64', '64',
               '--no-ranking-timer', '--time-modules', ''])
    row = parse_rows(capsys.readouterr().out)[str(REPO_ROOT / CO_DETR_TINY)]
    assert row[4] == '-' and row[5] == '- (no ranking loss)' and row[7] == '1.00'
    assert _RankingLossFunction.__dict__['backward'] is backward


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='resettable peak RSS needs Linux /proc')
def test_peak_memory_meter_measures_the_work_after_reset():
    """The CPU meter sees a 256 MiB allocation made after reset, and forgets it after the next reset."""
    meter = PeakMemoryMeter(torch.device('cpu'))
    size = 256 * train_benchmark.MIB
    meter.reset()
    block = torch.ones(size // 4, dtype=torch.float32)  # written, so the pages are resident
    peak, baseline = meter.read()
    assert meter.resettable
    assert peak - baseline >= 0.95 * size
    del block
    meter.reset()  # freed memory is returned to the system, the peak starts again from the current RSS
    small = torch.ones(1024)
    peak, baseline = meter.read()
    assert peak - baseline < 0.25 * size
    del small


def test_format_table_reports_memory_and_ratios():
    """Memory columns: absolute peak with the increase over the baseline, and the ratio to the first config."""
    mib = train_benchmark.MIB
    common = dict(params=2e6, share=None, timed=0, rank_share=None, rank_forward=None, rank_backward=None,
                  rank_modules=0, memory_resettable=True, load=(1.0, 1.5))
    rows = [dict(config='a.py', median=2.0, mean=2.0, peak_memory=1000 * mib, memory_baseline=600 * mib, **common),
            dict(config='b.py', median=1.0, mean=1.1, peak_memory=1500 * mib, memory_baseline=700 * mib, **common)]
    lines = train_benchmark.format_table(rows)
    cells = [[cell.strip() for cell in line.strip('|').split('|')] for line in lines[2:]]
    assert cells[0][7:] == ['1.00', '1000 (+400)', '1.00']
    assert cells[1][7:] == ['0.50', '1500 (+800)', '1.50']
    header = train_benchmark.format_header(rows, iters=3, warmup=1, batch=1, img_size=(320, 320), device='cpu')
    assert '3 timed iterations after 1 warm-up, batch 1, 320x320, cpu' in header
    assert 'load average 1.00..1.50' in header and 'process peak RSS' in header
