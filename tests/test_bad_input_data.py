"""Bad datasets are refused (or reported) before training, naming the file and what is wrong.

Each test breaks a copy of the toy COCO set in one way and runs the check tools/train.py runs before the Runner
(``brs_detr.datasets.check_datasets`` on the toy config), or the image loader the tools put into the pipelines.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.logging import MMLogger

from brs_detr.datasets import (CheckedLoadImageFromFile, DataCheckError, ImageLoadError, check_coco_file,
                               check_datasets, name_images_in_load_errors)
from brs_detr.datasets.coco_check import load_annotation_json
from reliability_utils import TOY_CONFIG

CLASSES = ('rectangle', 'ellipse', 'triangle')


@pytest.fixture
def toy(toy_coco_root, tmp_path) -> Path:
    """A private copy of the toy COCO set (8 train, 4 val images)."""
    return Path(shutil.copytree(toy_coco_root, tmp_path / 'toy_coco'))


def annotations(toy: Path, split: str = 'train') -> dict:
    return json.loads((toy / 'annotations' / f'instances_{split}.json').read_text())


def save(toy: Path, content: dict, split: str = 'train') -> Path:
    path = toy / 'annotations' / f'instances_{split}.json'
    path.write_text(json.dumps(content))
    return path


def check_train(toy: Path, **policy):
    return check_coco_file(str(toy / 'annotations' / 'instances_train.json'), str(toy / 'train'), CLASSES,
                           filter_empty_gt=True, policy=None if not policy else _policy(**policy))


def _policy(**fields):
    from brs_detr.datasets import DataCheckPolicy
    return DataCheckPolicy(**fields)


@pytest.fixture
def warnings_logged(caplog):
    """The warnings the check logs (mmengine's logger does not propagate to the root logger: attach caplog).

    Other test modules silence the current MMLogger at import time (level ERROR); warnings must pass here.
    """
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)


def test_toy_set_passes(toy):
    report = check_train(toy)
    assert (report.num_images, report.invalid_boxes, report.empty_images, report.warnings) == (8, [], 0, [])


def test_truncated_json_names_file_position_and_truncation(toy):
    path = toy / 'annotations' / 'instances_train.json'
    text = path.read_text()
    path.write_text(text[:len(text) // 2])
    with pytest.raises(DataCheckError, match=rf'{path} is not valid JSON: .* \(line 1, column \d+\); the file '
                       r'stops without closing its JSON \(\d+ bytes\): it is probably truncated'):
        check_train(toy)


def test_malformed_json_names_line_and_column(toy):
    path = toy / 'annotations' / 'instances_train.json'
    lines = json.dumps(annotations(toy), indent=1).splitlines()
    lines[3] = lines[3] + ' oops'
    path.write_text('\n'.join(lines))
    with pytest.raises(DataCheckError, match=rf'{path} is not valid JSON: Expecting .* \(line 4, column \d+\)$'):
        check_train(toy)


def test_empty_and_not_coco_json(toy):
    path = toy / 'annotations' / 'instances_train.json'
    path.write_text('')
    with pytest.raises(DataCheckError, match=rf'annotation file {path} is empty'):
        check_train(toy)
    path.write_text('{"images": []}')
    with pytest.raises(DataCheckError, match='"annotations" is missing or not a list'):
        check_train(toy)


def test_missing_image_files_are_listed_with_the_annotation_file(toy):
    for name in ('000003.png', '000005.png'):
        (toy / 'train' / name).unlink()
    ann_file = toy / 'annotations' / 'instances_train.json'
    with pytest.raises(DataCheckError, match=rf'2 of the 8 image files that {ann_file} references are missing: '
                       rf'{toy / "train" / "000003.png"}, {toy / "train" / "000005.png"}'):
        check_train(toy)


def test_empty_image_file(toy):
    (toy / 'train' / '000002.png').write_bytes(b'')
    with pytest.raises(DataCheckError, match=r'1 of the 8 image files .* are empty \(0 bytes\): .*000002.png'):
        check_train(toy)


def test_image_file_that_is_a_folder(toy):
    """A folder named like the image (an unpacked archive): was 'not an image Pillow can read (IsADirectoryError)'."""
    (toy / 'train' / '000002.png').unlink()
    (toy / 'train' / '000002.png').mkdir()
    with pytest.raises(DataCheckError, match=r'1 of the 8 image files .* are folders, not files: .*000002.png$'):
        check_train(toy)


def test_unreadable_image_file(toy, monkeypatch):
    """(Permissions cannot be taken away from root, who runs CI: ``os.access`` answers for the file here.)"""
    import os
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode: not str(p).endswith('000004.png') and real_access(p, mode))
    with pytest.raises(DataCheckError, match=r'1 of the 8 image files .* cannot be read \(permissions\): .*0004'):
        check_train(toy)


def test_corrupt_image_bytes_fail_at_load_time_naming_image_and_annotation_file(toy):
    image = toy / 'train' / '000006.png'
    image.write_bytes(image.read_bytes()[:100])  # truncated PNG: exists and is not empty, decoding fails
    ann_file = str(toy / 'annotations' / 'instances_train.json')
    loader = CheckedLoadImageFromFile(ann_file=ann_file)
    with pytest.raises(ImageLoadError, match=rf'cannot load image {image} \(image id 6, listed in {ann_file}\): the '
                       r'file is not a decodable image \(100 bytes: truncated or corrupt\?\)'):
        loader(dict(img_path=str(image), img_id=6))
    with pytest.raises(ImageLoadError, match='the file does not exist'):
        loader(dict(img_path=str(toy / 'train' / 'nope.png'), img_id=9))
    missing = dict(img_path=str(toy / 'train' / 'nope.png'))
    assert CheckedLoadImageFromFile(ignore_empty=True)(missing) is None  # the parent's option is kept
    assert loader(dict(img_path=str(toy / 'train' / '000001.png')))['img'].shape == (128, 128, 3)


def test_degenerate_boxes_warn_by_default_and_error_on_request(toy, warnings_logged):
    content = annotations(toy)
    content['annotations'][0]['bbox'][2] = 0.0  # zero width
    content['annotations'][1]['bbox'][3] = -5  # negative height
    save(toy, content)
    ids = [content['annotations'][i]['id'] for i in (0, 1)]
    with pytest.raises(DataCheckError, match=rf'2 of 17 boxes are invalid \(id {ids[0]}: size 0.0x\d+ \(width or '
                       rf'height under 1 px\), id {ids[1]}: size \d+x-5 .*: 11.8% is more than '
                       r'data_check.max_invalid_box_fraction=0.01'):
        check_train(toy)
    report = check_train(toy, max_invalid_box_fraction=0.5)
    assert [ann_id for ann_id, _ in report.invalid_boxes] == ids
    assert 'mmdet drops the degenerate ones' in warnings_logged.text
    with pytest.raises(DataCheckError, match='2 of 17 boxes are invalid .* Fix them, or set '
                       'data_check.invalid_boxes=warn'):
        check_train(toy, invalid_boxes='error')


def test_box_outside_the_image(toy):
    content = annotations(toy)
    content['annotations'][2]['bbox'] = [100, 100, 60, 20]  # 32 px beyond the 128-px image
    save(toy, content)
    ann_id = content['annotations'][2]['id']
    with pytest.raises(DataCheckError, match=rf'id {ann_id}: \[x, y, w, h\] = \[100, 100, 60, 20\] reaches 32 px '
                       r'outside the 128x128 image'):
        check_train(toy, invalid_boxes='error')


def test_xyxy_boxes_are_refused_as_a_systematic_error(toy):
    content = annotations(toy)
    for ann in content['annotations']:
        x, y, w, h = ann['bbox']
        ann['bbox'] = [x, y, x + w, y + h]
    save(toy, content)
    with pytest.raises(DataCheckError, match=r"systematic error \(boxes as \[x1, y1, x2, y2\] instead of COCO's"):
        check_train(toy)


def test_images_without_annotations_are_counted(toy, warnings_logged):
    content = annotations(toy)
    content['annotations'] = [a for a in content['annotations'] if a['image_id'] not in (1, 2)]
    save(toy, content)
    assert check_train(toy).empty_images == 2
    assert ('2 of 8 images have no annotation of the config\'s classes; filter_empty_gt=True leaves them out of '
            'training') in warnings_logged.text
    content['annotations'] = []
    save(toy, content)
    with pytest.raises(DataCheckError, match='none of its 8 images has an annotation of the config\'s classes: '
                       'nothing to train on'):
        check_train(toy)


def test_category_ids_not_in_the_file(toy):
    content = annotations(toy)
    content['annotations'][4]['category_id'] = 9
    save(toy, content)
    with pytest.raises(DataCheckError, match=rf'annotation id {content["annotations"][4]["id"]} has category_id 9, '
                       r'which is not in "categories" \(ids: 1, 2, 3\)'):
        check_train(toy)
    for key in ('category_id', 'image_id'):  # ids written as strings by a CSV converter, say
        content = annotations(toy)
        content['annotations'][0][key] = str(content['annotations'][0][key])
        save(toy, content)
        with pytest.raises(DataCheckError, match=rf"{key.replace('_', '.?')} '\d+', which is not in .*\(here a string, "
                           r"the id \d+ an integer: write every id the same way\)"):
            check_train(toy)


def test_config_classes_must_be_categories_of_the_file_in_its_order(toy):
    ann_file = str(toy / 'annotations' / 'instances_train.json')
    with pytest.raises(DataCheckError, match=r"the config's classes \['rect'\] are not categories of this file \(its "
                       r'categories: rectangle, ellipse, triangle\)'):
        check_coco_file(ann_file, None, ('rect', 'ellipse'))
    with pytest.raises(DataCheckError, match=r"\(its categories: rectangle, ellipse, triangle\) \('Rectangle' is "
                       r"'rectangle' there; 'ellipse ' is 'ellipse' there: names must match exactly, case and spaces"):
        check_coco_file(ann_file, None, ('Rectangle', 'ellipse '))
    with pytest.raises(DataCheckError, match=r"another order than the file \(\['ellipse', 'rectangle'\] vs "
                       r"\['rectangle', 'ellipse'\]\)"):
        check_coco_file(ann_file, None, ('ellipse', 'rectangle'))


def test_annotations_of_untrained_categories_are_reported(toy, warnings_logged):
    report = check_coco_file(str(toy / 'annotations' / 'instances_train.json'), None, ('rectangle', ))
    counts = report.ignored_categories
    assert set(counts) == {'ellipse', 'triangle'} and sum(counts.values()) < report.num_annotations
    assert f'{sum(counts.values())} annotations of categories the config does not train are ignored' in \
        warnings_logged.text


def test_duplicate_and_dangling_ids(toy):
    content = annotations(toy)
    content['annotations'][1]['id'] = content['annotations'][0]['id']
    save(toy, content)
    with pytest.raises(DataCheckError, match='is used twice'):
        check_train(toy)
    content = annotations(toy)
    content['annotations'][0]['image_id'] = 99
    save(toy, content)
    with pytest.raises(DataCheckError, match='refers to image id 99, which is not in "images"'):
        check_train(toy)
    content = annotations(toy)
    first = content['categories'][0]
    content['categories'].append(dict(first, name='renamed'))  # pycocotools would read both as 'renamed'
    save(toy, content)
    with pytest.raises(DataCheckError, match=rf"category id {first['id']} is used twice \({first['name']} and "
                       r"renamed\); pycocotools keeps only the last"):
        check_train(toy)


def test_check_datasets_walks_the_config_splits_and_evaluator(toy, tmp_path):
    cfg = Config.fromfile(str(TOY_CONFIG))
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = f'{toy}/'
    cfg.val_evaluator.ann_file = str(toy / 'annotations' / 'missing.json')
    with pytest.raises(DataCheckError, match=r'annotation file not found: .*missing.json'):
        check_datasets(cfg, ['train', 'val'])
    cfg.val_evaluator.ann_file = str(toy / 'annotations' / 'instances_val.json')
    assert [r.num_images for r in check_datasets(cfg, ['train', 'val'])] == [8, 4]
    cfg.data_check = dict(invalid_box='error')
    with pytest.raises(DataCheckError, match=r"data_check: .*unexpected keyword argument 'invalid_box'"):
        check_datasets(cfg, ['train'])


def test_val_images_that_are_training_images_are_named(toy, warnings_logged):
    """A val set that shares images with the training set (a wrong split, or the training file itself) gave a val mAP
    of partly memorised images without a word; separate splits stay quiet."""
    cfg = Config.fromfile(str(TOY_CONFIG))
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = f'{toy}/'
    cfg.val_evaluator.ann_file = str(toy / 'annotations' / 'instances_val.json')
    check_datasets(cfg, ['train', 'val'])
    assert 'also training images' not in warnings_logged.text
    val = annotations(toy, 'val')
    train = annotations(toy)
    val['images'][0]['file_name'] = '../train/' + train['images'][0]['file_name']
    val['annotations'] = [a for a in val['annotations'] if a['image_id'] != val['images'][0]['id']] + [
        dict(a, id=1000 + a['id'], image_id=val['images'][0]['id']) for a in train['annotations']
        if a['image_id'] == train['images'][0]['id']]
    save(toy, val, 'val')
    check_datasets(cfg, ['train', 'val'])
    assert re.search(r'instances_val.json: 1 of the 4 val images are also training images \(.*train/000001.png\): '
                     r'the val mAP measures partly what the model memorised', warnings_logged.text)
    cfg.val_dataloader.dataset.update(ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'))
    cfg.val_evaluator.ann_file = str(toy / 'annotations' / 'instances_train.json')
    check_datasets(cfg, ['train', 'val'])
    assert 'instances_train.json: all val images are also training images' in warnings_logged.text


def test_a_val_set_that_leaves_out_its_images_without_objects_is_named(toy, warnings_logged):
    """A val dataset copied from the training one (test_mode=False, filter_empty_gt=True) evaluated only the images
    with objects: the false detections on the others never counted, and the mAP was higher than it is."""
    cfg = Config.fromfile(str(TOY_CONFIG))
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = f'{toy}/'
    cfg.val_evaluator.ann_file = str(toy / 'annotations' / 'instances_val.json')
    val = annotations(toy, 'val')
    val['annotations'] = [a for a in val['annotations'] if a['image_id'] != val['images'][0]['id']]
    save(toy, val, 'val')
    check_datasets(cfg, ['train', 'val'])
    assert 'they are kept' in warnings_logged.text and 'leaves them out' not in warnings_logged.text
    cfg.val_dataloader.dataset.update(test_mode=False, filter_cfg=dict(filter_empty_gt=True))
    check_datasets(cfg, ['train', 'val'])
    assert re.search(r'instances_val.json: 1 of 4 images have no annotation of the config\'s classes; the val dataset '
                     r'leaves them out \(filter_cfg.filter_empty_gt=True and test_mode=False\), so the val mAP never '
                     r'counts the false detections on them; set val_dataloader.dataset.test_mode=True',
                     warnings_logged.text)


def test_evaluator_file_must_hold_the_ground_truth_of_the_evaluated_images(toy, tmp_path):
    """CocoMetric matches predictions to its ann_file by image id: the training file (same file names, other boxes)
    gave a val mAP without any error; a copy of the val file is fine."""
    cfg = Config.fromfile(str(TOY_CONFIG))
    cfg.val_dataloader.dataset.data_root = f'{toy}/'
    cfg.val_evaluator.ann_file = str(toy / 'annotations' / 'instances_train.json')
    with pytest.raises(DataCheckError, match=r'val_evaluator.ann_file .*instances_train.json is not the ground truth '
                       r'of the val dataset \(.*instances_val.json\): 4 of its 4 images differ \(image id 1 '
                       r'\(000001.png\): other boxes there .*Point val_evaluator.ann_file at .*instances_val.json'):
        check_datasets(cfg, ['val'])
    content = annotations(toy, 'val')
    shutil.copy(toy / 'annotations' / 'instances_val.json', tmp_path / 'copy.json')
    cfg.val_evaluator.ann_file = str(tmp_path / 'copy.json')
    assert check_datasets(cfg, ['val'])[0].num_images == 4
    content['images'][0]['file_name'] = 'other.png'
    (tmp_path / 'renamed.json').write_text(json.dumps(content))
    cfg.val_evaluator.ann_file = str(tmp_path / 'renamed.json')
    with pytest.raises(DataCheckError, match=r'1 of its 4 images differ \(image id 1 \(000001.png\): other.png '
                       r'there\)'):
        check_datasets(cfg, ['val'])


def test_pipelines_get_the_checked_image_loader(toy):
    cfg = Config.fromfile(str(TOY_CONFIG))
    name_images_in_load_errors(cfg, ['train', 'test'])
    for loader in (cfg.train_dataloader, cfg.test_dataloader):
        first = loader.dataset.pipeline[0]
        assert first.type == 'CheckedLoadImageFromFile'
        assert first.ann_file == f'data/toy_coco/{loader.dataset.ann_file}'


def test_load_annotation_json_not_utf8(tmp_path):
    path = tmp_path / 'a.json'
    path.write_bytes(b'\xff\xfe{}')
    with pytest.raises(DataCheckError, match='is not UTF-8 text'):
        load_annotation_json(str(path))
