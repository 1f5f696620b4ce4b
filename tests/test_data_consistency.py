"""Pixels that disagree with their annotations, and annotation sets that train on nothing or on garbage
(docs/reliability.md, "Images and annotations").

* Boxes are annotated on the stored pixels (mmdet's and COCO's convention): the loader ignores the EXIF orientation,
  the data check agrees and counts the tagged images; a stored size that differs from the annotation's is refused
  by the check (header read) and by the loader (per sample).
* An annotation the data check reports as malformed is really dropped before mmdet reads it (or the run stops); a
  data set that leaves nothing to train on (or to evaluate against) is refused.
"""
from __future__ import annotations

import copy
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from mmcv.transforms import LoadImageFromFile
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image

from brs_detr.datasets import CheckedLoadImageFromFile, DataCheckError, ImageLoadError, check_coco_file
from brs_detr.datasets.coco_check import DataCheckPolicy
from brs_detr.datasets.data_check import check_datasets, use_checked_loading
from reliability_utils import TOY_CONFIG

CLASSES = ('rectangle', 'ellipse', 'triangle')
ORIENTATION_TAG = 0x0112


def write_json(path: Path, content: dict) -> str:
    path.write_text(json.dumps(content, allow_nan=True))
    return str(path)


@pytest.fixture(scope='module')
def toy_json(toy_coco_root) -> dict:
    return json.loads((toy_coco_root / 'annotations' / 'instances_train.json').read_text())


def exif_jpeg(path: Path, width: int, height: int, orientation: int) -> None:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, :width // 2] = 255  # the left half white: a turned image has it elsewhere
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes())


# ----------------------------------------------------------------------------- images
def test_loader_reads_the_stored_pixels_of_an_exif_tagged_jpeg(tmp_path):
    exif_jpeg(tmp_path / 'photo.jpg', width=60, height=40, orientation=6)
    results = dict(img_path=str(tmp_path / 'photo.jpg'), img_id=7, width=60, height=40)
    assert LoadImageFromFile()(dict(results))['img'].shape == (60, 40, 3)  # mmcv turns it: boxes would not fit
    loaded = CheckedLoadImageFromFile(ann_file='train.json')(dict(results))
    assert loaded['img'].shape == (40, 60, 3)
    assert loaded['img'][:, :25].mean() > 240 and loaded['img'][:, 35:].mean() < 15  # white on the left, as stored


def test_loader_refuses_an_image_whose_size_is_not_the_annotated_one(tmp_path):
    exif_jpeg(tmp_path / 'small.jpg', width=50, height=40, orientation=1)
    loader = CheckedLoadImageFromFile(ann_file='train.json')
    with pytest.raises(ImageLoadError, match=rf'image {tmp_path}/small.jpg \(image id 3, listed in train.json\) is '
                       r'50x40 \(width x height\) but its annotation says 100x80: its boxes would not fit its pixels '
                       r'\(scaled by 2: the image was resized after it was annotated, or before\?\)'):
        loader(dict(img_path=str(tmp_path / 'small.jpg'), img_id=3, width=100, height=80))
    assert CheckedLoadImageFromFile(check_size=False)(dict(img_path=str(tmp_path / 'small.jpg'), width=100,
                                                           height=80)) is not None


def photo_dataset(tmp_path: Path, annotated_size) -> str:
    """Two JPEGs, one stored 60x40 with EXIF orientation 6; its annotation gives ``annotated_size``."""
    images = tmp_path / 'images'
    images.mkdir()
    exif_jpeg(images / 'a.jpg', 60, 40, orientation=6)
    exif_jpeg(images / 'b.jpg', 60, 40, orientation=1)
    width, height = annotated_size
    return write_json(tmp_path / 'photos.json', dict(
        images=[dict(id=1, file_name='a.jpg', width=width, height=height),
                dict(id=2, file_name='b.jpg', width=60, height=40)],
        annotations=[dict(id=i, image_id=i, category_id=1, bbox=[2, 2, 10, 10], area=100, iscrowd=0) for i in (1, 2)],
        categories=[dict(id=1, name='rectangle')]))


def test_data_check_agrees_with_the_loader_on_exif_and_sizes(tmp_path):
    """Annotated on the stored pixels: passes, and counts the tagged image. Annotated on the image as displayed
    (turned): refused, naming the file, the sizes and the cause."""
    report = check_coco_file(photo_dataset(tmp_path, (60, 40)), str(tmp_path / 'images'), ['rectangle'])
    assert dict(report.exif_orientations) == {6: 1}
    turned = tmp_path / 'turned'
    turned.mkdir()
    with pytest.raises(DataCheckError, match=rf'photos.json: 1 of its 2 images differ in size from their annotation, '
                       rf'so their boxes would not fit the pixels trained on: image id 1 \({turned}/images/a.jpg\): '
                       r'the file is 60x40 \(width x height\) but the annotation says 40x60 \(the file has EXIF '
                       r'orientation 6: annotated on the image as displayed\?'):
        check_coco_file(photo_dataset(turned, (40, 60)), str(turned / 'images'), ['rectangle'])


def test_data_check_refuses_a_file_that_is_no_image(tmp_path):
    """Found by the header read before training, not when its batch comes."""
    ann_file = photo_dataset(tmp_path, (60, 40))
    (tmp_path / 'images' / 'b.jpg').write_text('<html>404 Not Found</html>')  # a failed download, say
    with pytest.raises(DataCheckError, match=rf'1 of the 2 image files that {ann_file} references are not images '
                       rf'the loader can decode: {tmp_path}/images/b.jpg: not an image Pillow can read'):
        check_coco_file(ann_file, str(tmp_path / 'images'), ['rectangle'])


def test_data_check_refuses_a_tiff_opencv_cannot_decode(tmp_path):
    """Pillow reads a TIFF of 32-bit float samples, OpenCV (mmcv's decoder) does not: the loader said "truncated or
    corrupt?" when its batch came."""
    import numpy as np
    from PIL import Image

    ann_file = photo_dataset(tmp_path, (60, 40))
    content = json.loads(Path(ann_file).read_text())
    content['images'][1]['file_name'] = 'depth.tif'
    Path(ann_file).write_text(json.dumps(content))
    size = (content['images'][1]['height'], content['images'][1]['width'])
    Image.fromarray(np.zeros(size, np.float32), mode='F').save(tmp_path / 'images' / 'depth.tif')
    with pytest.raises(DataCheckError, match=rf'{tmp_path}/images/depth.tif: a TIFF of 32-bit samples \(Pillow mode '
                       r'F\), which OpenCV, the decoder of mmcv\'s image loading, cannot decode'):
        check_coco_file(ann_file, str(tmp_path / 'images'), ['rectangle'])


def test_test_drawings_use_the_stored_pixels_and_one_file_per_image(tmp_path):
    """tools/test.py --show-dir: mmdet's DetVisualizationHook drew the boxes of a tagged JPEG on the turned image
    (60 x 40 stored, drawn 40 x 60) and saved cam0/0001.jpg and cam1/0001.jpg both as 0001.jpg (one drawing lost)."""
    from types import SimpleNamespace

    import mmcv
    import torch
    from mmdet.structures import DetDataSample
    from mmdet.visualization import DetLocalVisualizer
    from mmengine.structures import InstanceData

    from brs_detr.engine.hooks import StoredPixelsVisualizationHook
    for camera, orientation in (('cam0', 6), ('cam1', 1)):
        (tmp_path / camera).mkdir()
        exif_jpeg(tmp_path / camera / '0001.jpg', 60, 40, orientation)
    DetLocalVisualizer.get_instance('test_drawings', save_dir=str(tmp_path / 'vis'))
    samples = []
    for camera in ('cam0', 'cam1'):
        sample = DetDataSample(metainfo=dict(img_path=str(tmp_path / camera / '0001.jpg')))
        sample.pred_instances = InstanceData(bboxes=torch.tensor([[2., 2., 20., 20.]]), scores=torch.tensor([0.9]),
                                             labels=torch.tensor([0]))
        samples.append(sample)
    hook = StoredPixelsVisualizationHook(draw=True, test_out_dir='show')
    hook.after_test_iter(SimpleNamespace(work_dir=str(tmp_path), timestamp='ts'), 0, {}, samples)
    drawn = sorted(path.name for path in (tmp_path / 'ts' / 'show').iterdir())
    assert drawn == ['0001.jpg', 'cam1_0001.jpg']
    # ground truth and predictions side by side, each 60 x 40 as stored and predicted (mmdet: 80 x 60 in all)
    assert mmcv.imread(str(tmp_path / 'ts' / 'show' / '0001.jpg')).shape == (40, 120, 3)


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header says ``width`` x ``height`` (its pixel data is a stub: only the header is read)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    header = struct.pack('>IIBBBBB', width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', header) + chunk(b'IDAT', zlib.compress(b'\0')) +
                     chunk(b'IEND', b''))


def test_very_large_images_are_checked_and_those_opencv_cannot_decode_named(tmp_path):
    """An aerial image of 20000 x 20000 passes the check (Pillow's decompression-bomb limit raised its
    DecompressionBombError from the header read: a traceback); one of 40000 x 30000, more than OpenCV decodes, is
    refused by the check, and the loader names the limit (it said "truncated or corrupt?")."""
    images = tmp_path / 'images'
    images.mkdir()
    png_header_only(images / 'aerial.png', 20000, 20000)
    png_header_only(images / 'huge.png', 40000, 30000)
    entries = [dict(id=1, file_name='aerial.png', width=20000, height=20000),
               dict(id=2, file_name='huge.png', width=40000, height=30000)]
    annotations = [dict(id=i, image_id=i, category_id=1, bbox=[10, 10, 50, 50], area=2500, iscrowd=0) for i in (1, 2)]
    ann_file = write_json(tmp_path / 'big.json', dict(images=entries[:1], annotations=annotations[:1],
                                                      categories=[dict(id=1, name='rectangle')]))
    check_coco_file(ann_file, str(images), ['rectangle'])
    ann_file = write_json(tmp_path / 'big.json', dict(images=entries, annotations=annotations,
                                                      categories=[dict(id=1, name='rectangle')]))
    with pytest.raises(DataCheckError, match=rf'1 of its 2 images are too large for the image loader: image id 2 '
                       rf'\({images}/huge.png\): 40000x30000 = 1,200,000,000 pixels, more than OpenCV decodes '
                       r'\(CV_IO_MAX_IMAGE_PIXELS=1,073,741,824\): set that environment variable higher'):
        check_coco_file(ann_file, str(images), ['rectangle'])
    with pytest.raises(ImageLoadError, match=r'huge.png \(image id 2, listed in big.json\): the image is 40000x30000 '
                       r'= 1,200,000,000 pixels, more than OpenCV decodes'):
        CheckedLoadImageFromFile(ann_file='big.json')(dict(img_path=str(images / 'huge.png'), img_id=2))


# ----------------------------------------------------------------------------- annotation sets
def with_changes(content: dict, change) -> dict:
    changed = copy.deepcopy(content)
    change(changed)
    return changed


@pytest.mark.parametrize('change, split, message', [
    (lambda d: [a.update(iscrowd=1) for a in d['annotations']], 'train',
     r'no annotation to train on \(of its 17 annotations: 17 iscrowd or ignore\); training would see background'),
    (lambda d: d.update(annotations=[]), 'train', r'no annotation to train on \("annotations" is empty\)'),
    (lambda d: d.update(images=[], annotations=[]), 'train', r'"images" is empty: nothing to train on'),
    (lambda d: d.update(annotations=[]), 'val', r'no annotation to evaluate against \("annotations" is empty\); the '
     r'val mAP would be -1. For a test set without annotations \(predictions only\), set val_evaluator.format_only'),
    (lambda d: d['categories'].append(dict(id=9, name='ellipse')), 'train',
     r"several categories share a name the config trains \('ellipse': ids 2, 9\)"),
], ids=['all-crowd', 'no-annotations', 'no-images', 'val-without-annotations', 'duplicate-class-name'])
def test_data_set_without_anything_to_learn_is_refused(toy_json, tmp_path, change, split, message):
    ann_file = write_json(tmp_path / 'ann.json', with_changes(toy_json, change))
    with pytest.raises(DataCheckError, match=message):
        check_coco_file(ann_file, None, CLASSES, split=split)
    if split == 'val':  # a test-dev style set: predictions only
        check_coco_file(ann_file, None, CLASSES, split=split, format_only=True)


def share_first_file(content: dict) -> None:
    content['images'][1]['file_name'] = content['images'][0]['file_name']


@pytest.mark.parametrize('change, split, message', [
    (share_first_file, 'train', r'image ids 1 and 2 are the same file 000001.png: each would train with its own '
     r'annotations only, the objects annotated under the other id as background'),
    (lambda d: [a.pop('iscrowd') for a in d['annotations']], 'val', r'17 annotations have no "iscrowd" \(ids 1, 2, '
     r'3, 4, 5, ... \(12 more\)\); COCO\'s evaluation reads it from every annotation \(KeyError: \'iscrowd\' after '
     r'the whole val inference\)'),
    (lambda d: [a.update(iscrowd='0') for a in d['annotations']], 'train', r"17 of 17 boxes are invalid \(id 1: "
     r"iscrowd '0' is not 0 or 1"),
    (lambda d: d['annotations'].extend([dict(a, id=a['id'] + 1000) for a in d['annotations']]), 'train',
     r'34 boxes are invalid \(id 1001: repeats annotation id 1 \(same image, category and box\).*systematic error '
     r'\(the file lists its annotations twice \(two exports merged, or one exported twice\)\?\)'),
    (lambda d: [a.update(bbox=[v / 128 for v in a['bbox']]) for a in d['annotations']], 'train',
     r'systematic error \(boxes in normalised 0-1 coordinates, as YOLO writes them, instead of pixels\?\)'),
    (lambda d: [a.update(area=0) for a in d['annotations']], 'train', r'systematic error \(areas of 0 or less: an '
     r'exporter that does not write them\? mmdet drops every box whose "area" is not positive; write area = w \* h'),
    (lambda d: [a.update(bbox=[str(v) for v in a['bbox']]) for a in d['annotations']], 'train',
     r'systematic error \(annotations that mmdet cannot read, as listed: a file of another format\?\)'),
    (lambda d: d.update(categories=[], annotations=[]), 'train', r'"categories" is empty: the file names no class '
     r'\(the config trains rectangle, ellipse, triangle\)'),
], ids=['two-entries-of-one-file', 'val-without-iscrowd', 'iscrowd-strings', 'annotations-twice', 'normalised-boxes',
        'no-categories', 'zero-areas', 'string-boxes'])
def test_annotation_sets_that_train_or_evaluate_wrongly_are_refused(toy_json, tmp_path, change, split, message):
    """mmdet trains on each entry of a file listed twice with half of its objects as background, ignores every
    object with ``iscrowd: "0"``, and pycocotools ends the evaluation with ``KeyError: 'iscrowd'``."""
    ann_file = write_json(tmp_path / 'ann.json', with_changes(toy_json, change))
    with pytest.raises(DataCheckError, match=message):
        check_coco_file(ann_file, None, CLASSES, split=split)


def test_polygons_far_from_their_box_are_invalid_where_masks_are_trained(toy_json, tmp_path):
    """Polygons in normalised coordinates (a converter's mistake) trained masks in the top-left pixel for boxes
    elsewhere, silently: now each is an invalid box (refused above max_invalid_box_fraction, else warned about); a
    polygon that outlines its box passes, and a detector (no masks) does not look at them."""
    def polygons(content: dict, scale: float = 1.0) -> None:
        for ann in content['annotations']:
            x, y, w, h = ann['bbox']
            ann['segmentation'] = [[v * scale for v in (x, y, x + w, y, x + w, y + h, x, y + h)]]
    ann_file = write_json(tmp_path / 'outlined.json', with_changes(toy_json, polygons))
    check_coco_file(ann_file, None, CLASSES, with_mask=True)
    ann_file = write_json(tmp_path / 'normalised.json', with_changes(toy_json, lambda d: polygons(d, 1 / 128)))
    check_coco_file(ann_file, None, CLASSES)
    first = toy_json['annotations'][0]['bbox']
    with pytest.raises(DataCheckError, match=rf'17 of 17 boxes are invalid \(id 1: segmentation polygons span '
                       rf'\[x1, y1, x2, y2\] = \[{first[0] / 128:g}, .*\], far from its bbox \[{first[0]}, .*\] '
                       r'\(IoU 0.00; polygons in normalised coordinates\?\)'):
        check_coco_file(ann_file, None, CLASSES, with_mask=True)


def toy_cfg(ann_file: str, img_dir: Path, with_mask: bool = False) -> Config:
    """The toy config's training set on ``ann_file`` (masks loaded when ``with_mask``), prepared as tools/train.py
    prepares it."""
    cfg = Config.fromfile(str(TOY_CONFIG))
    dataset = cfg.train_dataloader.dataset
    dataset.update(data_root='', ann_file=ann_file, data_prefix=dict(img=str(img_dir) + '/'))
    if with_mask:
        dataset.pipeline[1].with_mask = True
    use_checked_loading(cfg, ['train'])
    return cfg


def build_train_set(cfg: Config):
    from mmdet.registry import DATASETS
    with DefaultScope.overwrite_default_scope('mmdet'):
        return DATASETS.build(cfg.train_dataloader.dataset)


MALFORMED_BOXES = {1: None, 2: [1, 2, 3], 3: ['10', 10, 20, 20], 4: [10, 10, math.inf, 20], 5: [10, 10, math.nan, 20]}
#: An annotation without "area" (mmdet: KeyError).
NO_AREA = 6
#: An annotation with ``iscrowd: "0"`` (mmdet: true, the object is silently ignored).
CROWD_STRING = 7


def test_malformed_boxes_reported_as_dropped_are_dropped(toy_coco_root, tmp_path):
    """Five malformed boxes, a missing area and an ``iscrowd`` of ``"0"`` among 145 annotations (4.8 %, allowed up to
    5 % here): the check lists them as dropped, and the dataset the Runner builds holds none of them (mmdet itself
    crashes on three boxes and on the missing area, trains on the infinite box and ignores the "0" crowd as a crowd);
    every trained box is finite."""
    big = json.loads((toy_coco_root / 'annotations' / 'instances_train.json').read_text())
    big['annotations'] = [dict(a, id=a['id'] + 100 * copy_index,  # moved a little: not repeats of each other
                               bbox=[a['bbox'][0] + 0.01 * copy_index, *a['bbox'][1:]])
                          for copy_index in range(9) for a in big['annotations'] if copy_index == 0 or a['id'] <= 16]
    for ann in big['annotations']:
        if ann['id'] in MALFORMED_BOXES:
            ann['bbox'] = MALFORMED_BOXES[ann['id']]
        if ann['id'] == NO_AREA:
            del ann['area']
        if ann['id'] == CROWD_STRING:
            ann['iscrowd'] = '0'
    ann_file = write_json(tmp_path / 'ann.json', big)
    cfg = toy_cfg(ann_file, toy_coco_root / 'train')
    cfg.data_check = dict(max_invalid_box_fraction=0.05)
    report, = check_datasets(cfg, ['train'])
    assert dict(report.malformed)[NO_AREA] == 'no "area"'
    assert dict(report.malformed)[CROWD_STRING] == "iscrowd '0' is not 0 or 1"
    assert sorted(ann_id for ann_id, _ in report.malformed) == sorted([*MALFORMED_BOXES, NO_AREA, CROWD_STRING])
    assert any('id 4: bbox [10, 10, inf, 20] is not 4 finite numbers' in w
               and 'brs-detr drops the 7 malformed or repeated ones' in w for w in report.warnings)
    dataset = build_train_set(cfg)
    boxes = [instance['bbox'] for i in range(len(dataset)) for instance in dataset.get_data_info(i)['instances']]
    assert len(boxes) == len(big['annotations']) - len(MALFORMED_BOXES) - 2 == report.trainable
    assert all(math.isfinite(v) for box in boxes for v in box)


def test_repeated_annotations_are_listed_and_trained_once(toy_coco_root, toy_json, tmp_path):
    """Three annotations listed twice (same image, category and box; a merge of two exports): mmdet trained each
    object twice, teaching one-to-one matching to predict it twice, and the evaluation counted the repeats as
    objects no detection can match. Now the check lists them, the dataset drops them, and on a val file the warning
    says what they do to the mAP."""
    repeated = {2: 1002, 5: 1005, 9: 1009}
    content = with_changes(toy_json, lambda d: d['annotations'].extend(
        dict(a, id=repeated[a['id']]) for a in list(d['annotations']) if a['id'] in repeated))
    ann_file = write_json(tmp_path / 'ann.json', content)
    cfg = toy_cfg(ann_file, toy_coco_root / 'train')
    cfg.data_check = dict(max_invalid_box_fraction=0.2)
    report, = check_datasets(cfg, ['train'])
    assert report.repeated == [(copy, first) for first, copy in repeated.items()]
    assert report.trainable == len(toy_json['annotations'])
    assert any('id 1002: repeats annotation id 2 (same image, category and box)' in w and
               'brs-detr drops the 3 malformed or repeated ones' in w for w in report.warnings)
    dataset = build_train_set(cfg)
    boxes = [(dataset.get_data_info(i)['img_id'], tuple(instance['bbox'])) for i in range(len(dataset))
             for instance in dataset.get_data_info(i)['instances']]
    assert len(boxes) == len(set(boxes)) == len(toy_json['annotations'])
    val_report = check_coco_file(ann_file, None, CLASSES, split='val', policy=DataCheckPolicy(
        max_invalid_box_fraction=0.2))
    assert any('the val evaluation reads the file itself and counts each of the 3 repeats as one more object that '
               'no detection can match' in w for w in val_report.warnings)


def test_malformed_segmentations_are_dropped_where_masks_are_used(toy_coco_root, toy_json, tmp_path):
    """With masks: a polygon holding null (mmdet's rasterisation exhausts the memory), an RLE of another size and a
    missing segmentation (mmdet crashes) are dropped; every image of the set then loads with its masks."""
    broken = {1: [[None, 69, 111, 69, 111, 111, 65, 111]], 2: dict(size=[64, 64], counts='abc'), 3: None}
    content = copy.deepcopy(toy_json)
    for ann in content['annotations']:
        if ann['id'] in broken:
            ann['segmentation'] = broken[ann['id']]
    ann_file = write_json(tmp_path / 'ann.json', content)
    cfg = toy_cfg(ann_file, toy_coco_root / 'train', with_mask=True)
    cfg.data_check = dict(max_invalid_box_fraction=0.2)
    report, = check_datasets(cfg, ['train'])
    assert sorted(ann_id for ann_id, _ in report.malformed) == [1, 2, 3]
    dataset = build_train_set(cfg)
    kept = sum(len(dataset.get_data_info(i)['instances']) for i in range(len(dataset)))
    assert kept == len(content['annotations']) - 3  # checked before the pipeline rasterises anything
    for index in range(len(dataset)):
        assert dataset[index]['data_samples'].gt_instances.masks.masks.shape[0] >= 0
    without_masks = toy_cfg(ann_file, toy_coco_root / 'train')  # the boxes are fine: nothing dropped
    assert sum(len(build_train_set(without_masks).get_data_info(i)['instances'])
               for i in range(len(dataset))) == len(content['annotations'])


def test_malformed_boxes_stop_a_dataset_that_cannot_drop_them(toy_coco_root, toy_json, tmp_path):
    from mmdet.datasets import CocoDataset
    from mmdet.registry import DATASETS

    @DATASETS.register_module(name='MyCocoDataset', force=True)
    class MyCocoDataset(CocoDataset):
        """A user's dataset class: read like COCO, but not one brs-detr replaces."""

    content = with_changes(toy_json, lambda d: d['annotations'][0].update(bbox=None))
    cfg = toy_cfg(write_json(tmp_path / 'ann.json', content), toy_coco_root / 'train')
    cfg.train_dataloader.dataset.type = 'MyCocoDataset'
    cfg.data_check = dict(max_invalid_box_fraction=0.1)
    with pytest.raises(DataCheckError, match=r'1 annotations are malformed \(id 1: bbox None is not 4 finite '
                       r'numbers\); the dataset type MyCocoDataset would crash on them or train on them as they are'):
        check_datasets(cfg, ['train'])
