"""tools/analysis_tools/browse_dataset.py end to end: the ground truth, after the train pipeline, pixel by pixel.

A toy COCO set of 192x256 images goes through the toy configs' train pipeline (Resize to fit 128x128: scale 0.5,
RandomFlip p=0.5). Every training sample must be saved once, at the pipeline's size, with each annotated box drawn
in its class colour at its resized (and, when the sample was flipped, mirrored) position; with the Mask R-CNN config
the resized masks are tinted; every other pixel is the resized image (tests/drawn_pixels.py).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import mmcv
import numpy as np
import pytest
from mmengine.config import Config

from conftest import CONFIGS_DIR, TOOLS_DIR
from drawn_pixels import UNCHANGED_TOL, check_drawing, mask_from_rle, read_rgb
from test_tools_e2e import run_tool

BROWSE = TOOLS_DIR / 'analysis_tools' / 'browse_dataset.py'
ATSS_CONFIG = CONFIGS_DIR / 'toy' / 'atss_r18-tiny_2xb2-12e_toy-coco.py'
MASK_CONFIG = CONFIGS_DIR / 'toy' / 'brs-mask-rcnn_r18-tiny_2xb2-12e_toy-coco.py'
TOY_META = Config.fromfile(CONFIGS_DIR / '_base_' / 'datasets' / 'toy_coco_detection.py').metainfo
CLASSES, PALETTE = TOY_META['classes'], TOY_META['palette']
IMAGE_SIZE = (192, 256)  # (H, W): the pipeline's Resize(scale=(128, 128), keep_ratio=True) halves it
PIPELINE_SCALE = (128, 128)
NUM_TRAIN = 3


@pytest.fixture(scope='module')
def dataset_root(tmp_path_factory) -> Path:
    from brs_detr.datasets.toy_coco import make_toy_coco

    base = tmp_path_factory.mktemp('browse')
    return Path(make_toy_coco(str(base / 'data' / 'toy_coco'), num_train=NUM_TRAIN, num_val=1, img_size=IMAGE_SIZE,
                              seed=2))


def annotations(dataset_root: Path) -> Dict[str, Tuple[Path, List[dict]]]:
    """file stem -> (image path, its COCO annotations)."""
    coco = json.loads((dataset_root / 'annotations' / 'instances_train.json').read_text())
    result = {}
    for image in coco['images']:
        anns = [ann for ann in coco['annotations'] if ann['image_id'] == image['id']]
        result[Path(image['file_name']).stem] = (dataset_root / 'train' / image['file_name'], anns)
    return result


def expected_sample(image_path: Path, anns: List[dict], flipped: bool, with_masks: bool):
    """What the pipeline makes of one sample: the resized (flipped) image, boxes, labels and masks."""
    image = mmcv.imrescale(mmcv.imread(str(image_path)), PIPELINE_SCALE, interpolation='bilinear')
    height, width = image.shape[:2]
    scale = width / IMAGE_SIZE[1]
    boxes, masks = [], []
    for ann in anns:
        x, y, w, h = (v * scale for v in ann['bbox'])
        boxes.append([width - (x + w), y, width - x, y + h] if flipped else [x, y, x + w, y + h])
        if with_masks:
            mask = mmcv.imrescale(mask_from_rle(ann['segmentation']).astype(np.uint8), PIPELINE_SCALE,
                                  interpolation='nearest')
            masks.append((mask[:, ::-1] if flipped else mask).astype(bool))
    image = image[:, ::-1] if flipped else image
    return image[..., ::-1].astype(np.int64), boxes, [ann['category_id'] - 1 for ann in anns], masks or None


def check_browsed(out_dir: Path, dataset_root: Path, with_masks: bool) -> List[dict]:
    samples = annotations(dataset_root)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f'{stem}.png' for stem in samples)
    results = []
    for stem, (image_path, anns) in samples.items():
        drawn = read_rgb(out_dir / f'{stem}.png')
        candidates = [expected_sample(image_path, anns, flipped, with_masks) for flipped in (False, True)]
        # RandomFlip decided per sample: the hypothesis whose image matches most pixels
        unchanged = [(np.abs(drawn - image).max(axis=2) <= UNCHANGED_TOL).mean() for image, *_ in candidates]
        image, boxes, labels, masks = candidates[int(np.argmax(unchanged))]
        assert drawn.shape == image.shape == (IMAGE_SIZE[0] // 2, IMAGE_SIZE[1] // 2, 3)
        results.append(check_drawing(drawn, image, boxes, labels, PALETTE, CLASSES, masks=masks))
    return results


def run_browse(args: List, cwd: Path, env: Dict[str, str], expect_rc: int = 0) -> str:
    return run_tool([sys.executable, BROWSE, *args], cwd, env, expect_rc)


def test_boxes_after_the_pipeline(dataset_root, tmp_path, monkeypatch):
    """In process (the tool runs as a subprocess below): the ATSS pipeline, boxes only."""
    from brs_detr.apis import browse_dataset

    monkeypatch.chdir(dataset_root.parents[1])
    written = browse_dataset(Config.fromfile(ATSS_CONFIG), output_dir=str(tmp_path), progress=False)
    assert len(written) == NUM_TRAIN
    results = check_browsed(tmp_path, dataset_root, with_masks=False)
    assert all(r['box_pixels'] > 0 for r in results) and sum(r['box_pixels'] for r in results) >= 60, results


@pytest.mark.slow
def test_masks_after_the_pipeline_without_a_display(dataset_root, tool_env, tmp_path):
    """The Mask R-CNN pipeline loads masks: they are drawn too. No display: the images are only saved."""
    out_dir = tmp_path / 'browse_mask'
    output = run_browse([MASK_CONFIG, '--output-dir', out_dir], dataset_root.parents[1], tool_env)
    assert 'no display (DISPLAY/WAYLAND_DISPLAY is not set): saving the images only' in output
    assert f'{NUM_TRAIN} sample(s) drawn into {out_dir}' in output
    results = check_browsed(out_dir, dataset_root, with_masks=True)
    assert all(r['mask_pixels'] > 0 for r in results) and sum(r['mask_pixels'] for r in results) >= 100, results


def test_max_samples_and_cfg_options(dataset_root, tmp_path, monkeypatch):
    """In process: --max-samples stops early; --cfg-options reach the pipeline (flip off: boxes where annotated)."""
    from brs_detr.apis import browse_dataset

    monkeypatch.chdir(dataset_root.parents[1])
    cfg = Config.fromfile(ATSS_CONFIG)
    cfg.merge_from_dict({'train_dataloader.dataset.pipeline.3.prob': 0.0})
    written = browse_dataset(cfg, output_dir=str(tmp_path), max_samples=2, progress=False)
    stems = sorted(annotations(dataset_root))[:2]
    assert written == [str(tmp_path / f'{stem}.png') for stem in stems]
    for stem in stems:
        image_path, anns = annotations(dataset_root)[stem]
        image, boxes, labels, _ = expected_sample(image_path, anns, flipped=False, with_masks=False)
        check_drawing(read_rgb(tmp_path / f'{stem}.png'), image, boxes, labels, PALETTE, CLASSES)


def test_the_training_set_is_checked_before_drawing(dataset_root, tmp_path, monkeypatch):
    """A missing annotation file is named by the data check, as tools/train.py names it (mmdet: pycocotools'
    FileNotFoundError traceback); --skip-data-check leaves it to mmdet."""
    from brs_detr.apis import browse_dataset
    from brs_detr.datasets.coco_check import DataCheckError

    monkeypatch.chdir(dataset_root.parents[1])
    cfg = Config.fromfile(ATSS_CONFIG)
    cfg.train_dataloader.dataset.ann_file = 'annotations/missing.json'
    with pytest.raises(DataCheckError, match='annotation file not found: data/toy_coco/annotations/missing.json'):
        browse_dataset(cfg, output_dir=str(tmp_path), progress=False)
    with pytest.raises(FileNotFoundError):
        browse_dataset(cfg, output_dir=str(tmp_path), progress=False, check_data=False)
    assert not list(tmp_path.iterdir())


def test_repeated_samples_get_distinct_files(dataset_root, tmp_path, monkeypatch):
    """A RepeatDataset shows every image twice: the second drawing gets <stem>_<index>.png instead of overwriting."""
    from brs_detr.apis import browse_dataset

    monkeypatch.chdir(dataset_root.parents[1])
    cfg = Config.fromfile(ATSS_CONFIG)
    cfg.train_dataloader.dataset = dict(type='RepeatDataset', times=2, dataset=cfg.train_dataloader.dataset)
    written = browse_dataset(cfg, output_dir=str(tmp_path), progress=False)
    stems = sorted(annotations(dataset_root))
    assert written == [str(tmp_path / f'{stem}.png') for stem in stems] + [
        str(tmp_path / f'{stem}_{NUM_TRAIN + index}.png') for index, stem in enumerate(stems)]


def test_no_display_and_no_output_dir_fails(tmp_path, monkeypatch, capsys):
    """In process: without a display there is nothing to do unless --output-dir is given; a missing config is named."""
    from brs_detr.apis.launch import ToolInputError
    from conftest import load_tool_module

    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)
    browse = load_tool_module('analysis_tools/browse_dataset')
    monkeypatch.setattr(sys, 'argv', [str(BROWSE)])
    with pytest.raises(SystemExit) as exit_info:
        browse.main([str(ATSS_CONFIG)])
    assert exit_info.value.code == 2
    assert ('browse_dataset.py: error: no display (DISPLAY/WAYLAND_DISPLAY is not set): pass --output-dir DIR to save '
            'the images') in capsys.readouterr().err
    with pytest.raises(ToolInputError, match=f'config file not found: {tmp_path / "typo.py"}'):
        browse.main([str(tmp_path / 'typo.py'), '--output-dir', str(tmp_path)])
