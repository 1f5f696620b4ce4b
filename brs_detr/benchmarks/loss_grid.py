"""Loss benchmark, the grid: its rows (losses), logit regimes, cell seeds and the result of one cell.

Plain definitions without torch, shared by the scheduler (:mod:`brs_detr.benchmarks.loss`, which
``tools/benchmark_loss.py`` parses its choices from), the worker (:mod:`brs_detr.benchmarks.loss_worker`) and the
report (:mod:`brs_detr.benchmarks.loss_report`).
"""
import zlib
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


@dataclass(frozen=True)
class LossSpec:
    """One row of the benchmark.

    Attributes:
        title (str): Row name in the table.
        cfg (dict): mmdet MODELS config of the loss.
        binary_targets (bool): Targets are 1 for positives (AP, BAP, focal) instead of IoUs.
    """
    title: str
    cfg: dict
    binary_targets: bool


#: Losses by command-line key, in table order.
LOSSES: Dict[str, LossSpec] = {
    'focal': LossSpec('focal (mmdet sigmoid)', dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25),
                      True),
    'rs': LossSpec('RS (pairwise)', dict(type='RankSortLoss', delta=0.5, method='pairwise'), False),
    'rs_exact': LossSpec('RS exact', dict(type='RankSortLoss', delta=0.5, method='exact'), False),
    'brs': LossSpec('BRS', dict(type='BucketedRankSortLoss', delta=0.5), False),
    'ap': LossSpec('AP (pairwise)', dict(type='APLoss', delta=1.0, method='pairwise'), True),
    'ap_exact': LossSpec('AP exact', dict(type='APLoss', delta=1.0, method='exact'), True),
    'bap': LossSpec('BAP', dict(type='BucketedAPLoss', delta=1.0), True),
}

#: Logit generators: (negative mean, negative std, positive mean, positive std).
REGIMES: Dict[str, Tuple[float, float, float, float]] = {
    'early': (0.0, 1.0, 0.0, 1.0),
    'trained': (-3.0, 1.5, 1.0, 1.5),
}
REGIME_TEXT = {
    'early': 'all logits N(0, 1)',
    'trained': 'negatives N(-3, 1.5), positives N(1, 1.5)',
}

#: Lower end of the positives' IoU targets (uniform in (IOU_LOW, 1]).
IOU_LOW = 0.1


@dataclass
class CellResult:
    """Measurement of one (regime, size, ratio, loss) cell.

    ``status`` is ``ok``, ``over_budget`` (first call killed after the budget), ``skipped`` (a smaller cell of
    the same loss and regime was over budget) or ``failed`` (the worker crashed or the loss raised).
    """
    regime: str
    size: int
    ratio: float
    loss: str
    num_pos: int
    budget_s: float = 0.0
    status: str = 'ok'
    median_ms: Optional[float] = None
    median_cpu_ms: Optional[float] = None
    first_ms: Optional[float] = None
    times_ms: List[float] = field(default_factory=list)
    cpu_ms: List[float] = field(default_factory=list)
    peak_mib: Optional[float] = None
    loss_values: Dict[str, float] = field(default_factory=dict)
    error: str = ''
    load1: Optional[float] = None


def cell_seed(seed: int, regime: str, size: int, ratio: float) -> int:
    """Deterministic seed of one grid cell (the same inputs for every loss of the cell)."""
    return (seed * 1_000_003 + zlib.crc32(f'{regime}/{size}/{ratio!r}'.encode())) % (2 ** 63)


def num_positives(size: int, ratio: float) -> int:
    """Number of positives of a cell: ``round(size * ratio)``, at least 1."""
    return max(1, int(round(size * ratio)))
