"""The same training on one process with two images as on two processes (gloo, CPU) with one image each.

One spawn of two processes computes everything (tests/dist_equivalence.py): the ranking losses alone with
``rank_across_processes`` and one DDP training step of the tiny focal Co-DETR (with encoder and decoder activation
checkpointing), BRS-DETR and BRS-ATSS, each ranking per process (the default) and across processes. The reference
is the same code in this process with both images. Tolerances are those of float32 sums taken in another order
(model runs) or exact float64 (the losses alone); the measured differences of the terms that cannot be equal are
asserted as bounds (docs/rank_based_heads.md, "One GPU or many").
"""
import logging

import pytest
import torch
from mmengine.logging import MMLogger
from mmdet.utils import register_all_modules

import brs_detr  # noqa: F401  (registers the models)
import dist_equivalence as de
from brs_detr.engine.dist import run_in_cpu_processes

register_all_modules()
MMLogger.get_current_instance().setLevel(logging.ERROR)

#: Relative tolerance of float32 loss terms summed in another order.
FLOAT32_RTOL = 2e-5
#: Gradients: a tensor's largest difference relative to its largest entry. Measured: below 1e-5 everywhere but in
#: the extra pyramid level's GroupNorm (``downsample``), which normalises groups of 2 values on the 1x1 map of a
#: 128-pixel image and amplifies float32 rounding to 5e-4.
GRAD_RTOL = 1e-3
#: Parameters after the step, in units of the learning rate. AdamW's first step moves a parameter by
#: ``lr * g / (|g| + 1e-8)``: a gradient entry of about 1e-8 whose float32 rounding differs moves it differently
#: (measured: up to 0.022 lr on BRS-ATSS); every other entry moves by the same +-lr.
PARAM_LR_TOL = 0.05


@pytest.fixture(scope='module')
def two_processes(free_port):
    return run_in_cpu_processes(de.two_process_job, 2, free_port())


@pytest.fixture(scope='module')
def one_process():
    return {key: de.train_once(rank=None, **kwargs) for key, kwargs in de.REFERENCE_RUNS.items()}


def relative_difference(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-9) -> float:
    """Largest absolute difference relative to the largest magnitude of ``b``, or to ``floor`` if that is smaller."""
    if not b.numel():
        return 0.0
    return float((a - b).abs().max()) / max(float(b.abs().max()), floor)


def worst_gradient(grads: dict, reference: dict) -> tuple:
    """(parameter, relative difference) of the worst gradient; both dicts name the same parameters."""
    assert grads.keys() == reference.keys()
    return max(((key, relative_difference(grads[key], reference[key])) for key in reference), key=lambda kv: kv[1])


# ----------------------------------------------------------------------------------------------------------------
# the ranking losses alone

@pytest.mark.parametrize('layout', de.LOSS_LAYOUTS)
@pytest.mark.parametrize('case', list(de.LOSS_CASES))
def test_global_ranking_equals_one_process_with_the_whole_batch(two_processes, case, layout):
    reference = de.global_loss_run(case, layout, rank=None)
    start = 0
    for rank, result in enumerate(two_processes):
        run = result['losses'][(case, layout)]
        assert run['values'].keys() == reference['values'].keys()
        for key, value in run['values'].items():  # the loss of the global batch, on every process
            torch.testing.assert_close(value, reference['values'][key], rtol=1e-12, atol=1e-15)
        size = run['logits_grad'].numel()
        # DDP averages over the 2 processes: each returns 2x its share of the whole batch's gradient
        torch.testing.assert_close(run['logits_grad'] / 2, reference['logits_grad'][start:start + size],
                                   rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(run['theta_grad'], reference['theta_grad'], rtol=1e-12, atol=1e-15)
        start += size
    if layout != 'none':
        assert reference['values']['loss_rank'] > 0


@pytest.mark.parametrize('case', ['BRS', 'AP'])
def test_global_ranking_receives_only_the_relevant_examples(two_processes, case):
    """Sizes (8 bytes per process) plus positives and negatives above the lowest positive minus delta, padded."""
    delta = de.LOSS_CASES[case]['delta']
    parts = [de.loss_problem('both', process) for process in (0, 1)]
    lowest = min(float(logits[targets > 0].min()) for logits, targets in parts)
    relevant = [int(((targets > 0) | ((targets == 0) & (logits >= lowest - delta))).sum()) for logits, targets in parts]
    assert all(count < 0.6 * size for count, size in zip(relevant, de.LOSS_SIZES))  # the selection matters
    expected = 2 * 8 + 2 * (2 * max(relevant) * 8)  # float64 (logit, target) pairs from both processes
    for result in two_processes:
        assert result['losses'][(case, 'both')]['gathered_bytes'] == expected
        assert result['losses'][(case, 'none')]['gathered_bytes'] == 0  # no positive: nothing is sent


def test_invalid_input_on_one_process_fails_on_every_process(two_processes):
    """NaN logits on process 1 raise there and on process 0, instead of leaving process 0 waiting."""
    assert 'BucketedRankSortLoss: 1 of 1700 logits are NaN' in two_processes[1]['invalid_input']
    assert 'the inputs of process 1 are invalid' in two_processes[0]['invalid_input']


def test_without_the_option_each_process_ranks_its_own_batch(two_processes):
    """The option is what makes the losses equal: without it a process's loss is that of its own part."""
    reference = de.global_loss_run('BRS', 'both', rank=None)
    for rank in (0, 1):
        own = de.global_loss_run('BRS', 'both', rank=rank, rank_across_processes=False)
        assert abs(float(own['values']['loss_rank'] - reference['values']['loss_rank'])) > 1e-3


def test_benchmark_tool_measures_the_option(two_processes):
    """tools/benchmark_global_ranking.py's loss cell, run by the two processes: both options timed, bytes counted."""
    from brs_detr.benchmarks.global_ranking import format_loss_table

    rows = two_processes[0]['benchmark']
    assert [row['across'] for row in rows] == [False, True]
    assert rows[0]['bytes'] == 0 and 16 < rows[1]['bytes'] <= 16 + 2 * 2 * 8 * de.BENCHMARK_SIZE
    assert all(row['seconds'] > 0 for row in rows)
    table = format_loss_table(rows, de.BENCHMARK_SIZE, 0.02, 2)
    assert table[2].startswith('| trained | BRS |') and 'x |' in table[2]


@pytest.mark.parametrize('argv, message', [
    (['--processes', '1'], 'at least 2'),
    (['--size', '0'], 'nothing to measure'),
    (['--ratio', '1.5'], '0 < --ratio < 1'),
])
def test_benchmark_tool_rejects_bad_arguments(argv, message, capsys):
    from conftest import load_tool_module

    tool = load_tool_module('benchmark_global_ranking')
    with pytest.raises(SystemExit):
        tool.parse_args(argv)
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# one training step of the tiny models

def assert_same_losses(run: dict, reference: dict, name: str, skip_batch_dependent: bool = True) -> None:
    assert run['losses'].keys() == reference['losses'].keys()
    for key, value in reference['losses'].items():
        if key == 'loss' or (skip_batch_dependent and de.batch_dependent(name, key)):
            continue
        torch.testing.assert_close(run['losses'][key], value, rtol=FLOAT32_RTOL, atol=1e-6, msg=key)


def test_focal_co_detr_same_losses_and_gradients_with_checkpointing_under_ddp(two_processes, one_process):
    """The one-to-one terms and the ATSS head's terms (mmdet normalises them with reduce_mean) are equal, and so
    is the gradient of their sum; the 2 processes also checkpoint every encoder and decoder layer under DDP."""
    run, reference = two_processes[0]['models']['co_detr'], one_process['co_detr']
    assert_same_losses(run, reference, 'co_detr')
    key, worst = worst_gradient(run['exact_grads'], reference['exact_grads'])
    assert worst < GRAD_RTOL, key
    # measured (batch-dependent: random samplers, positive-query padding): the terms differ, by at most 60 %
    differing = {key: abs(float(run['losses'][key] / reference['losses'][key] - 1)) for key in reference['losses']
                 if de.batch_dependent('co_detr', key) and 'loss' in key}
    assert max(differing.values()) > 1e-4
    assert max(differing.values()) < 0.05, differing


@pytest.mark.parametrize('name', ['brs_detr', 'brs_atss'])
def test_global_ranking_same_losses_and_update(two_processes, one_process, name):
    run, reference = two_processes[0]['models'][f'{name}_global'], one_process[name]
    assert two_processes[1]['models'][f'{name}_global']['losses'] == run['losses']  # averaged: the same
    assert_same_losses(run, reference, name)
    key, worst = worst_gradient(run['exact_grads'], reference['exact_grads'])
    assert worst < GRAD_RTOL, key
    assert run['gathered_bytes'] > 0
    if not de.BATCH_DEPENDENT[name]:  # BRS-ATSS: the whole update, through DDP, AdamW and clipping
        key, worst = worst_gradient(run['grads'], reference['grads'])
        assert worst < GRAD_RTOL, key
        lr = de.build_config(name).optim_wrapper.optimizer.lr
        moved = max(float((run['params'][key] - value).abs().max()) for key, value in reference['params'].items())
        assert moved < PARAM_LR_TOL * lr


@pytest.mark.parametrize('name', ['brs_detr', 'brs_atss'])
def test_per_process_ranking_changes_the_losses(two_processes, one_process, name):
    """Without the option (the paper's setting) each process ranks its own image: the ranking terms, and the box
    terms value-matched to them, differ from one process with both images (measured bound below)."""
    run, reference = two_processes[0]['models'][name], one_process[name]
    assert run['gathered_bytes'] == 0
    ranking = [key for key in reference['losses'] if 'loss_rank' in key and not de.batch_dependent(name, key)]
    changes = [abs(float(run['losses'][key] / reference['losses'][key] - 1)) for key in ranking]
    assert 0 < max(changes) < 0.1
    head = 'bbox_head.atss_cls.weight' if name == 'brs_atss' else 'bbox_head.cls_branches.0.weight'
    assert relative_difference(run['grads'][head], reference['grads'][head]) > 0.05


# ----------------------------------------------------------------------------------------------------------------
# the learning rate of tools/train.py --auto-scale-lr

@pytest.mark.parametrize('processes, per_process, accumulation, expected_scale', [
    (4, 4, 1, 1.0),  # the published 4 x 4
    (8, 2, 1, 1.0),  # another split of 16
    (1, 4, 4, 1.0),  # 1 GPU, accumulating 4 iterations per update: still 16 images per update
    (1, 2, 1, 0.125),
    (2, 2, 2, 0.5),
])
def test_auto_scale_lr_follows_the_batch_of_an_update(processes, per_process, accumulation, expected_scale):
    """mmengine's Runner.scale_lr computes (processes x per-process batch) / base_batch_size and ignores
    accumulative_counts; tools/train.py --auto-scale-lr divides base_batch_size by it."""
    from types import SimpleNamespace
    from unittest import mock

    from mmengine.config import Config
    from mmengine.optim import OptimWrapper
    from mmengine.runner import Runner

    from brs_detr.apis.train import enable_auto_scale_lr

    cfg = Config(dict(auto_scale_lr=dict(enable=False, base_batch_size=16),
                      optim_wrapper=dict(type='OptimWrapper', accumulative_counts=accumulation)))
    enable_auto_scale_lr(cfg, 'config.py')
    parameter = torch.nn.Parameter(torch.zeros(1))
    wrapper = OptimWrapper(torch.optim.SGD([parameter], lr=1.0))
    runner = SimpleNamespace(world_size=processes, _train_dataloader=dict(batch_size=per_process),
                             param_schedulers=None, logger=mock.Mock())
    Runner.scale_lr(runner, wrapper, cfg.auto_scale_lr)
    assert wrapper.optimizer.param_groups[0]['lr'] == pytest.approx(expected_scale)
