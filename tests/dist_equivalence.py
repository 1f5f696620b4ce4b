"""Two processes x one image against one process x two images: the computations behind test_dist_equivalence.py.

Each function here runs once in the single reference process (``rank=None``: both images, no process group) and once
in each of two gloo processes (one image each), so that the test compares the same code on the two layouts. Every
process builds the same model from the same seed (DDP broadcasts rank 0's weights anyway), reads the same two fixed
images and takes one training step through mmengine's DDP wrapper and the config's own optimizer wrapper, which is
how ``tools/dist_train.sh`` trains.

What a run records (all float64 on the CPU):

* ``losses``: every loss term, averaged over the processes (the quantity whose gradient DDP applies; mmengine's
  logger prints rank 0's values only);
* ``exact_grads``: the gradient of the sum of the loss terms that must not depend on the layout (see
  :data:`BATCH_DEPENDENT`), averaged over processes as DDP does;
* ``grads``: the gradient of the whole loss after DDP's averaging, before clipping;
* ``params``: every parameter after the optimizer step.
"""
from __future__ import annotations

import copy
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from brs_detr.models.losses import set_rank_across_processes
from brs_detr.benchmarks.global_ranking import loss_job

REPO_ROOT = Path(__file__).resolve().parents[1]
IMG_SIZE = 128
#: The two images' ground truth (xyxy boxes, labels): different object counts, so the positives differ per image.
GROUND_TRUTH = (
    ([[10, 12, 62, 70], [70, 20, 120, 100]], [0, 2]),
    ([[6, 30, 52, 92]], [1]),
)
CONFIGS = {
    'co_detr': 'configs/co_deformable_detr/co_deformable_detr_r18-tiny_1xb2-1e_toy-coco.py',
    'brs_detr': 'configs/brs_detr/brs-detr_r18-tiny_1xb2-1e_toy-coco.py',
    'brs_atss': 'configs/toy/atss_r18-tiny_2xb2-12e_toy-coco.py',
}
#: Loss terms that depend on how the batch is split (the test measures them instead of requiring equality), per
#: model: a regex of the keys and why.
POSITIVE_QUERIES = (re.compile(r'_aux\d+$'),
                    'Co-DETR pads the positive queries of every image to the positive count of the richest image of '
                    'the local batch, subsamples them with a generator that advances image by image, and the decoder '
                    'self-attention mixes the padding queries into the positives')
RANDOM_SAMPLERS = (re.compile(r'^(loss_rpn_\w+|loss_(cls|bbox)0|acc0)$'),
                   "Co-DETR's RPN and RoI head draw random samples (RandomSampler) image after image from the "
                   "process's generator")
BATCH_DEPENDENT = {
    'co_detr': dict(positive_queries=POSITIVE_QUERIES, random_samplers=RANDOM_SAMPLERS),
    'brs_detr': dict(positive_queries=POSITIVE_QUERIES),
    'brs_atss': dict(),
}


def rank_layout(rank: Optional[int]) -> List[int]:
    """Indices of the images a process trains on: both for the reference, its own for a rank."""
    return [0, 1] if rank is None else [rank]


def build_config(name: str, global_ranking: bool = False, num_cp: int = -1):
    """The tiny config ``name`` with the test's settings.

    The backbone's BatchNorm uses its running statistics (``norm_eval=True``, as every published R50 config
    freezes it): in training mode its statistics are those of the local batch, which differ by construction.
    ``brs_atss`` is the toy ATSS with the BRS-ATSS head of configs/rank_based/brs-atss_r50_fpn_4xb4-12e_coco.py.
    """
    from mmengine.config import Config

    cfg = Config.fromfile(str(REPO_ROOT / CONFIGS[name]))
    cfg.model.backbone.norm_eval = True
    if name == 'brs_atss':
        head = cfg.model.bbox_head
        head.type = 'RankBasedATSSHead'
        head.loss_cls = dict(type='BucketedRankSortLoss', delta=0.5, loss_weight=1.0)
        head.loss_bbox = dict(type='GIoULoss', loss_weight=1.0)
        head.loss_centerness = None
        head.reg_decoded_bbox = True
    else:
        cfg.model.bbox_head.aux_sampling_seed = 0
        if num_cp > 0:
            cfg.model.encoder.num_cp = num_cp
            cfg.model.decoder.num_cp = num_cp
    set_rank_across_processes(cfg.model, global_ranking)
    return cfg


def make_data(indices: Sequence[int]) -> dict:
    """Two fixed random 128x128 images with :data:`GROUND_TRUTH`, as a data loader hands them to ``train_step``."""
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    generator = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (2, 3, IMG_SIZE, IMG_SIZE), generator=generator, dtype=torch.uint8)
    inputs, samples = [], []
    for index in indices:
        boxes, labels = GROUND_TRUTH[index]
        sample = DetDataSample(metainfo=dict(img_id=index, img_shape=(IMG_SIZE, IMG_SIZE),
                                             ori_shape=(IMG_SIZE, IMG_SIZE), scale_factor=(1.0, 1.0)))
        sample.gt_instances = InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32),
                                           labels=torch.tensor(labels, dtype=torch.long))
        inputs.append(images[index])
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def batch_dependent(name: str, key: str) -> Optional[str]:
    """Name of the :data:`BATCH_DEPENDENT` group of model ``name`` a loss key belongs to, or None."""
    for group, (pattern, _) in BATCH_DEPENDENT[name].items():
        if pattern.search(key):
            return group
    return None


def _scalar(value) -> torch.Tensor:
    """A loss term as mmengine's ``parse_losses`` reduces it (a list of per-level losses is summed)."""
    return sum(item.mean() for item in value) if isinstance(value, (list, tuple)) else value.mean()


def _mean_over_processes(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.detach().to(torch.float64).clone()
    if dist.is_initialized():
        dist.all_reduce(tensor)
        tensor /= dist.get_world_size()
    return tensor


def train_once(name: str, rank: Optional[int], global_ranking: bool = False, num_cp: int = -1,
               exact_pass: bool = True) -> dict:
    """One training step of the tiny model ``name`` on this process's images; see the module docstring.

    ``exact_pass`` first computes ``exact_grads`` in a separate forward and backward (only where the model has
    batch-dependent terms; otherwise they are ``grads``).
    """
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import build_optim_wrapper
    from mmdet.registry import MODELS

    cfg = build_config(name, global_ranking, num_cp)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.train()
    data = make_data(rank_layout(rank))
    params = dict(model.named_parameters())
    result = {}
    if exact_pass and BATCH_DEPENDENT[name]:
        # gradient of the layout-independent terms, averaged over processes by hand (as DDP averages)
        torch.manual_seed(1)
        batch = model.data_preprocessor(copy.deepcopy(data), True)
        losses = model(**batch, mode='loss')
        sum(_scalar(value) for key, value in losses.items()
            if 'loss' in key and batch_dependent(name, key) is None).backward()
        result['exact_grads'] = {key: _mean_over_processes(p.grad if p.grad is not None else torch.zeros_like(p))
                                 for key, p in params.items()}
        model.zero_grad(set_to_none=True)

    # the real step: DDP wrapper, the config's optimizer wrapper (AdamW, lr multipliers, clipping)
    torch.manual_seed(1)
    wrapped = model
    if rank is not None:
        wrapped = MMDistributedDataParallel(module=model, device_ids=None, broadcast_buffers=False,
                                            find_unused_parameters=False)
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    grads: Dict[str, torch.Tensor] = {}
    step = optim_wrapper.step

    def step_recording_gradients(**kwargs) -> None:
        grads.update({key: p.grad.detach().to(torch.float64).clone() for key, p in params.items()
                      if p.grad is not None})
        step(**kwargs)

    optim_wrapper.step = step_recording_gradients
    log_vars = wrapped.train_step(copy.deepcopy(data), optim_wrapper)
    result.update(
        losses={key: _mean_over_processes(value) for key, value in log_vars.items()},
        grads=grads,
        params={key: p.detach().to(torch.float64).clone() for key, p in params.items()})
    if not BATCH_DEPENDENT[name]:
        result['exact_grads'] = grads
    gathered = [m.gathered_bytes for m in model.modules() if hasattr(m, 'gathered_bytes')]
    result['gathered_bytes'] = sum(gathered)
    return result


# ----------------------------------------------------------------------------------------------------------------
# The ranking losses alone, float64

#: Ranking losses and the method of each, compared with and without ``rank_across_processes``.
LOSS_CASES = {
    'RS': dict(type='RankSortLoss', delta=0.5),
    'RS-pairwise': dict(type='RankSortLoss', delta=0.5, method='pairwise'),
    'BRS': dict(type='BucketedRankSortLoss', delta=0.5),
    'AP': dict(type='APLoss', delta=1.0),
    'BAP': dict(type='BucketedAPLoss', delta=1.0),
}
#: Logits per process (different, so that the gathered sizes differ) and the fraction of positives.
LOSS_SIZES = (3000, 1700)
LOSS_POSITIVES = 0.03


def loss_problem(layout: str, process: int):
    """Logits and IoU targets (float64 tensors) of one process's part of a problem.

    ``layout``: ``'both'`` (positives on both processes), ``'one_without_positives'`` (process 1 has none) or
    ``'none'`` (no positive anywhere: zero losses).
    """
    import numpy as np
    from ranking_reference import random_problem

    rng = np.random.default_rng(100 + process)
    logits, targets = random_problem(rng, LOSS_SIZES[process], LOSS_POSITIVES, ignore_fraction=0.05,
                                     regime='trained')
    if layout == 'none' or (layout == 'one_without_positives' and process == 1):
        targets[targets > 0] = 0
    return torch.from_numpy(logits), torch.from_numpy(targets)


def global_loss_run(case: str, layout: str, rank: Optional[int], rank_across_processes: bool = True) -> dict:
    """Loss values and gradients of one case on this process's part (``rank=None``: both parts concatenated).

    The logits are ``base * theta`` with one shared parameter ``theta = 1``, whose gradient is averaged over
    processes as DDP averages gradients.
    """
    from mmdet.registry import MODELS

    parts = [loss_problem(layout, process) for process in rank_layout(rank)]
    base = torch.cat([part[0] for part in parts])
    targets = torch.cat([part[1] for part in parts])
    loss = MODELS.build(dict(LOSS_CASES[case], rank_across_processes=rank_across_processes))
    theta = torch.ones((), dtype=torch.float64, requires_grad=True)
    logits = (base * theta).detach().requires_grad_()
    values = loss(logits, targets)
    sum(values.values()).backward()
    logits_grad = logits.grad.clone()
    theta_grad = _mean_over_processes((logits_grad * base).sum())  # d loss / d theta, averaged over processes
    return dict(values={key: value.detach() for key, value in values.items()}, logits_grad=logits_grad,
                theta_grad=theta_grad, gathered_bytes=loss.gathered_bytes)


def invalid_input_run(rank: int) -> str:
    """Process 1 hands NaN logits to a loss with ``rank_across_processes``: the message each process raises."""
    from mmdet.registry import MODELS

    logits, targets = loss_problem('both', rank)
    if rank == 1:
        logits[3] = float('nan')
    loss = MODELS.build(dict(LOSS_CASES['BRS'], rank_across_processes=True))
    try:
        loss(logits, targets)
    except FloatingPointError as error:
        return str(error)
    return ''


#: The 2-process model runs: name -> arguments of :func:`train_once`. The focal Co-DETR runs with activation
#: checkpointing of every encoder and decoder layer (compared with a reference without it): checkpointing under DDP.
MODEL_RUNS = {
    'co_detr': dict(name='co_detr', num_cp=2),
    'brs_detr': dict(name='brs_detr', exact_pass=False),
    'brs_detr_global': dict(name='brs_detr', global_ranking=True),
    'brs_atss': dict(name='brs_atss'),
    'brs_atss_global': dict(name='brs_atss', global_ranking=True),
}
#: The single-process reference of each model (the option has no effect with one process).
REFERENCE_RUNS = {'co_detr': dict(name='co_detr'), 'brs_detr': dict(name='brs_detr'),
                  'brs_atss': dict(name='brs_atss')}
LOSS_LAYOUTS = ('both', 'one_without_positives', 'none')
#: Logits per process of the benchmark's loss cell run in the test (tools/benchmark_global_ranking.py).
BENCHMARK_SIZE = 5000


def two_process_job(rank: int, world_size: int) -> dict:
    """Everything the test needs from the two processes, in one spawn (starting processes costs most)."""
    from mmengine.logging import MMLogger
    from mmdet.utils import register_all_modules

    import brs_detr  # noqa: F401  (registers the models)
    register_all_modules()
    MMLogger.get_current_instance().setLevel(logging.ERROR)
    losses = {(case, layout): global_loss_run(case, layout, rank)
              for case in LOSS_CASES for layout in LOSS_LAYOUTS}
    benchmark = loss_job(rank, world_size, losses=['brs'], regimes=['trained'], size=BENCHMARK_SIZE, ratio=0.02,
                         seed=0, repeats=1, warmup=0)
    return dict(losses=losses, invalid_input=invalid_input_run(rank), benchmark=benchmark,
                models={key: train_once(rank=rank, **kwargs) for key, kwargs in MODEL_RUNS.items()})
