"""The exact state-dict layouts of the original models (tests/data/*_official_state_dict_layout.json, every
name and shape, produced by constructing the original code) and random state dicts with those layouts."""
import json
import os.path as osp
from collections import OrderedDict

import torch

DATA_DIR = osp.join(osp.dirname(osp.abspath(__file__)), 'data')


def load_layout(name: str) -> dict:
    """Layout ``name``: e.g. ``'co_deformable_detr_r50'``, ``'brs_detr_r50'``."""
    with open(osp.join(DATA_DIR, f'{name}_official_state_dict_layout.json')) as f:
        return json.load(f)


def random_state_dict(layout: dict, seed: int = 0) -> 'OrderedDict[str, torch.Tensor]':
    """A state dict with the original names, shapes, dtypes and order, and random values."""
    generator = torch.Generator().manual_seed(seed)
    int_keys = set(layout['non_float32_entries'].get('int64', []))
    state_dict = OrderedDict()
    for key, shape in layout['state_dict']:
        if key in int_keys:
            state_dict[key] = torch.randint(0, 100, shape, generator=generator)
        else:
            state_dict[key] = torch.randn(shape, generator=generator)
    return state_dict
