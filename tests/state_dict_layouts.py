"""The exact state-dict layouts of the original (published) models and random state dicts with those layouts.

``tests/data/layouts/<model-zoo entry name>.json`` holds every name and shape (in order) of the model a published
checkpoint was saved from, produced by building the original code (see each file's ``source_repo``,
``source_commit``, ``config``, ``built_with`` and ``notes``). One file per entry of ``checkpoints/model_zoo.json``
that has a checkpoint (except Swin-L, too large to randomise in the test suite).
"""
import json
import os.path as osp
from collections import OrderedDict
from typing import List

import torch

LAYOUT_DIR = osp.join(osp.dirname(osp.abspath(__file__)), 'data', 'layouts')


def layout_path(name: str) -> str:
    """Path of the layout of model-zoo entry ``name``."""
    return osp.join(LAYOUT_DIR, f'{name}.json')


def layout_names() -> List[str]:
    """The model-zoo entry names that have a layout file."""
    import os
    return sorted(file[:-len('.json')] for file in os.listdir(LAYOUT_DIR) if file.endswith('.json'))


def load_layout(name: str) -> dict:
    """Layout of model-zoo entry ``name``, e.g. ``'brs-detr_r50_12e_coco'``, ``'rs-atss_r50_fpn_12e_coco'``."""
    with open(layout_path(name)) as f:
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
