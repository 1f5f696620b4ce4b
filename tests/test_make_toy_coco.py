"""tools/make_toy_coco.py: valid COCO json, exact boxes and masks of the drawn pixels, determinism, atomic writing."""
from __future__ import annotations

import filecmp
import json
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
from mmengine.config import Config
from pycocotools.coco import COCO

from conftest import CONFIGS_DIR, TOOLS_DIR

SPLITS = ('train', 'val')


@pytest.fixture(scope='module')
def small_set(tmp_path_factory, make_toy_coco_module) -> Path:
    """A non-square set (96x128) so that height and width cannot be swapped unnoticed."""
    out = tmp_path_factory.mktemp('toy') / 'toy_coco'
    make_toy_coco_module.make_toy_coco(str(out), num_train=12, num_val=5, img_size=(96, 128), seed=3)
    return out


def test_coco_json_is_valid(small_set, make_toy_coco_module):
    for split, num_images in zip(SPLITS, (12, 5)):
        coco = COCO(str(small_set / 'annotations' / f'instances_{split}.json'))
        assert len(coco.getImgIds()) == num_images
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(make_toy_coco_module.DEFAULT_CLASSES)
        assert coco.getCatIds() == [1, 2, 3]
        ann_ids = coco.getAnnIds()
        assert len(ann_ids) >= num_images  # at least one object per image
        assert len(set(ann_ids)) == len(ann_ids)
        for img in coco.loadImgs(coco.getImgIds()):
            assert (img['height'], img['width']) == (96, 128)
            image = cv2.imread(str(small_set / split / img['file_name']))
            assert image is not None and image.shape == (96, 128, 3)
        for ann in coco.loadAnns(ann_ids):
            x, y, w, h = ann['bbox']
            img = coco.loadImgs(ann['image_id'])[0]
            assert ann['iscrowd'] == 0 and ann['category_id'] in (1, 2, 3)
            assert x >= 0 and y >= 0 and w > 0 and h > 0
            assert x + w <= img['width'] and y + h <= img['height']
            assert 0 < ann['area'] <= w * h


def test_boxes_match_drawn_pixels(small_set, make_toy_coco_module):
    """Each box is the tight box of the pixels of its class colour, and no class colour appears outside boxes."""
    palette = make_toy_coco_module.PALETTE_BGR
    gap = make_toy_coco_module.OBJECT_GAP
    for split in SPLITS:
        coco = COCO(str(small_set / 'annotations' / f'instances_{split}.json'))
        for img in coco.loadImgs(coco.getImgIds()):
            image = cv2.imread(str(small_set / split / img['file_name']))
            covered = np.zeros(image.shape[:2], dtype=bool)
            for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img['id']])):
                x, y, w, h = ann['bbox']
                # look in the box grown by less than the gap kept between objects: only this object is there
                x0, y0 = max(x - gap + 1, 0), max(y - gap + 1, 0)
                window = image[y0:y + h + gap - 1, x0:x + w + gap - 1]
                colour = np.array(palette[ann['category_id'] - 1], dtype=np.uint8)
                ys, xs = np.nonzero((window == colour).all(axis=-1))
                assert xs.size == ann['area']
                tight = [x0 + xs.min(), y0 + ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
                assert tight == ann['bbox'], (split, img['file_name'], ann)
                # the segmentation is exactly the object's pixels
                drawn = np.zeros(image.shape[:2], dtype=bool)
                drawn[y0 + ys, x0 + xs] = True
                np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), drawn)
                covered[y:y + h, x:x + w] = True
            for colour in palette:
                outside = (image == np.array(colour, dtype=np.uint8)).all(axis=-1) & ~covered
                assert not outside.any(), f'unannotated object of colour {colour} in {split}/{img["file_name"]}'


def test_deterministic_and_classes_match_config(tmp_path, make_toy_coco_module):
    a, b = tmp_path / 'a', tmp_path / 'b'
    for out in (a, b):
        make_toy_coco_module.make_toy_coco(str(out), num_train=3, num_val=2, seed=7)
    for rel in ('annotations/instances_train.json', 'annotations/instances_val.json', 'train/000002.png',
                'val/000001.png'):
        assert filecmp.cmp(a / rel, b / rel, shallow=False), rel
    other = tmp_path / 'c'
    make_toy_coco_module.make_toy_coco(str(other), num_train=3, num_val=2, seed=8)
    assert not filecmp.cmp(a / 'train/000001.png', other / 'train/000001.png', shallow=False)

    cfg = Config.fromfile(str(CONFIGS_DIR / '_base_' / 'datasets' / 'toy_coco_detection.py'))
    assert tuple(cfg.metainfo.classes) == tuple(make_toy_coco_module.DEFAULT_CLASSES)
    categories = json.loads((a / 'annotations/instances_val.json').read_text())['categories']
    assert [c['name'] for c in categories] == list(cfg.metainfo.classes)


def test_cli_custom_classes_jpg_and_overwrite(tmp_path, python_exe):
    out = tmp_path / 'data' / 'toy'
    cmd = [python_exe, str(TOOLS_DIR / 'make_toy_coco.py'), str(out), '--num-train', '2', '--num-val', '1',
           '--img-size', '64', '80', '--classes', 'a', 'b', 'c', 'd', '--format', 'jpg', '--seed', '1']
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    coco = COCO(str(out / 'annotations' / 'instances_train.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == ['a', 'b', 'c', 'd']
    assert sorted(p.name for p in (out / 'train').iterdir()) == ['000001.jpg', '000002.jpg']

    # an existing dataset is kept unless --overwrite; no temporary directory is left behind
    before = (out / 'annotations' / 'instances_train.json').read_bytes()
    done = subprocess.run(cmd[:-2] + ['--seed', '2'], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and 'already exists' in done.stderr and '--overwrite' in done.stderr
    assert (out / 'annotations' / 'instances_train.json').read_bytes() == before
    done = subprocess.run(cmd[:-2] + ['--seed', '2', '--overwrite'], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / 'annotations' / 'instances_train.json').read_bytes() != before
    assert sorted(p.name for p in out.parent.iterdir()) == ['toy']


@pytest.mark.parametrize('args, message', [
    (['--num-train', '0'], '--num-train and --num-val must be >= 1'),
    (['--img-size', '16', '16'], '--img-size must be at least 32'),
    (['--classes', 'a', 'a'], 'unique names'),
])
def test_cli_bad_input(tmp_path, python_exe, args, message):
    out = tmp_path / 'toy'
    done = subprocess.run([python_exe, str(TOOLS_DIR / 'make_toy_coco.py'), str(out)] + args, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert message in done.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_help_runs(repo_root, python_exe):
    # argparse formats help strings with %: a stray % in a help text crashes --help
    import subprocess
    out = subprocess.run([python_exe, str(repo_root / 'tools' / 'make_toy_coco.py'), '--help'], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert 'OUT_DIR' in out.stdout or 'out_dir' in out.stdout
