"""Draw the ground truth of a dataset after its training pipeline (``tools/analysis_tools/browse_dataset.py``)."""
from __future__ import annotations

import os.path as osp
from datetime import datetime
from typing import Dict, Iterator, List, Optional

import numpy as np
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.utils import ProgressBar

from mmdet.models.utils import mask2ndarray
from mmdet.registry import DATASETS, VISUALIZERS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import BaseBoxes
from mmdet.visualization import DetLocalVisualizer

from brs_detr.datasets.data_check import check_datasets, use_checked_loading
from .config_loading import check_config_components
from .drawing import visualizer_config, write_png


def build_visualizer(cfg: Config, dataset_meta: dict) -> DetLocalVisualizer:
    """The config's visualizer (``DetLocalVisualizer`` if it names none) without vis backends, under a fresh name."""
    visualizer_cfg = visualizer_config(cfg)
    visualizer_cfg.name = f'browse_dataset-{datetime.now().timestamp()}'
    visualizer = VISUALIZERS.build(visualizer_cfg)
    visualizer.dataset_meta = dataset_meta
    return visualizer


def sample_image_and_gt(item: dict) -> tuple:
    """The pipeline output of one sample as an RGB image (H, W, 3) and a data sample whose ``gt_instances`` hold
    plain box arrays and boolean masks (what the visualizer draws: numpy, whose functions it applies to them)."""
    image = item['inputs'].permute(1, 2, 0).numpy()[..., ::-1]  # (C, H, W) BGR -> (H, W, C) RGB
    data_sample: DetDataSample = item['data_samples'].numpy()
    gt_instances = data_sample.gt_instances
    bboxes = gt_instances.get('bboxes', None)
    if isinstance(bboxes, BaseBoxes):
        gt_instances.bboxes = bboxes.numpy()
    masks = gt_instances.get('masks', None)
    if masks is not None:
        gt_instances.masks = mask2ndarray(masks).astype(bool)
    data_sample.gt_instances = gt_instances
    return np.ascontiguousarray(image), data_sample


def _unique_name(img_path: Optional[str], index: int, used: Dict[str, int]) -> str:
    """``<stem>`` of the sample's image; ``<stem>_<index>`` when the stem was already written (repeated images)."""
    name = osp.splitext(osp.basename(img_path))[0] if img_path else f'{index:06d}'
    if name in used:
        name = f'{name}_{index}'
    used[name] = index
    return name


def browse_dataset(cfg: Config,
                   output_dir: Optional[str] = None,
                   show: bool = False,
                   show_interval: float = 2,
                   max_samples: Optional[int] = None,
                   progress: bool = True,
                   check_data: bool = True) -> List[str]:
    """Draw each sample of ``cfg.train_dataloader.dataset`` after its pipeline, with its ground truth.

    As mmdet's ``browse_dataset.py`` (boxes, class names, masks where the pipeline loads them), except: the samples
    are loaded as ``tools/train.py`` loads them (:func:`~brs_detr.datasets.data_check.use_checked_loading`:
    the stored pixels, whatever their EXIF orientation; annotations brs-detr drops are not drawn); every sample
    is saved as a lossless ``OUTPUT_DIR/<stem>.png`` (atomically), a repeated image gets ``<stem>_<index>.png`` instead
    of overwriting the first, ``max_samples`` stops early, and no vis backend writes anything else.

    Args:
        cfg: The config (``--cfg-options`` already merged).
        output_dir: Folder for the PNG files; ``None`` writes nothing.
        show: Show every image in a window for ``show_interval`` seconds (needs a display).
        show_interval: Seconds each image is shown.
        max_samples: Draw at most this many samples (``None``: all).
        progress: Print a progress bar.
        check_data: Check the training set first, as ``tools/train.py`` does
            (:func:`~brs_detr.datasets.data_check.check_datasets`: a missing or broken annotation file or image is
            named before anything is drawn).

    Returns:
        The written files, in dataset order.
    """
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    check_config_components(cfg)
    use_checked_loading(cfg, ('train', ))  # the image loader and dataset of tools/train.py
    if check_data:
        check_datasets(cfg, ('train', ))
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    visualizer = build_visualizer(cfg, dataset.metainfo)
    num_samples = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    progress_bar = ProgressBar(num_samples) if progress else None
    written: List[str] = []
    used_names: Dict[str, int] = {}
    for index, item in zip(range(num_samples), _iterate(dataset)):
        image, data_sample = sample_image_and_gt(item)
        name = _unique_name(data_sample.metainfo.get('img_path'), index, used_names)
        visualizer.add_datasample(
            name, image, data_sample, draw_pred=False, show=show, wait_time=show_interval, out_file=None)
        if output_dir is not None:
            out_file = osp.join(output_dir, f'{name}.png')
            write_png(visualizer.get_image(), out_file)
            written.append(out_file)
        if progress_bar is not None:
            progress_bar.update()
    return written


def _iterate(dataset) -> Iterator[dict]:
    for index in range(len(dataset)):
        yield dataset[index]
