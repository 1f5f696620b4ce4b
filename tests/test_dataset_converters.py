"""tools/dataset_converters/voc2coco.py and yolo2coco.py: exact boxes, the checks, atomic output, the summary.

The toy generator writes the same images and objects as COCO JSON and in VOC / YOLO layout
(``make_toy_coco(annotation_format=...)``); converting the VOC and YOLO copies back must give the COCO boxes exactly
(VOC's 1-based inclusive pixel boxes and YOLO's normalised centres both round-trip). Every error names its file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
from PIL import Image

from brs_detr.datasets.coco_check import DataCheckPolicy, check_coco_file
from brs_detr.datasets.converters import ConversionError, convert_voc, convert_yolo
from brs_detr.datasets.converters.coco_output import decoded_image_size
from brs_detr.datasets.toy_coco import make_toy_coco
from brs_detr.fileio.output_paths import OutputPathError
from conftest import load_tool_module

CLASSES = ('red_box', 'green_disc', 'blue_wedge')
NUM_TRAIN, NUM_VAL = 6, 3
#: Non-square images: swapped width and height would not go unnoticed.
IMG_SIZE = (96, 128)


def make(tmp_path: Path, annotation_format: str, seed: int = 0, name: str = None) -> Path:
    return Path(make_toy_coco(str(tmp_path / (name or f'toy_{annotation_format}')), num_train=NUM_TRAIN,
                              num_val=NUM_VAL, img_size=IMG_SIZE, seed=seed, classes=CLASSES,
                              annotation_format=annotation_format))


def boxes_by_image(coco: dict) -> List[List[tuple]]:
    """Per image (in file order): sorted (category name, bbox) of its objects."""
    names = {category['id']: category['name'] for category in coco['categories']}
    by_image: Dict[int, List[tuple]] = {image['id']: [] for image in coco['images']}
    for ann in coco['annotations']:
        by_image[ann['image_id']].append((names[ann['category_id']], tuple(float(v) for v in ann['bbox'])))
    return [sorted(by_image[image['id']]) for image in coco['images']]


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> Dict[str, dict]:
    root = make(tmp_path_factory.mktemp('coco'), 'coco')
    return {split: json.loads((root / 'annotations' / f'instances_{split}.json').read_text()) for split in
            ('train', 'val')}


def test_voc_round_trip_gives_the_coco_boxes_exactly(tmp_path, reference):
    root = make(tmp_path, 'voc')
    lines = []
    written = convert_voc(str(root), str(tmp_path / 'out'), classes=CLASSES, log=lines.append)
    assert sorted(written) == ['voc07_train', 'voc07_val']
    for split in ('train', 'val'):
        coco = json.loads(Path(written[f'voc07_{split}']).read_text())
        assert [c['name'] for c in coco['categories']] == list(CLASSES)
        assert boxes_by_image(coco) == boxes_by_image(reference[split])
        assert all(image['file_name'].startswith('VOC2007/JPEGImages/') for image in coco['images'])
        assert {(image['width'], image['height']) for image in coco['images']} == {(IMG_SIZE[1], IMG_SIZE[0])}
        check_coco_file(written[f'voc07_{split}'], str(root), CLASSES)  # the data check of tools/train.py passes
    counts = {name: sum(1 for ann in reference['train']['annotations']
                        if ann['category_id'] == index + 1) for index, name in enumerate(CLASSES)}
    summary = next(line for line in lines if 'voc07_train.json' in line)
    assert f'{NUM_TRAIN} images, {sum(counts.values())} objects (' in summary
    assert ', '.join(f'{name} {count}' for name, count in counts.items()) in summary


def test_yolo_round_trip_gives_the_coco_boxes_exactly(tmp_path, reference):
    root = make(tmp_path, 'yolo')
    lines = []
    written = convert_yolo(str(root), str(tmp_path / 'out'), log=lines.append)
    assert sorted(written) == ['train', 'val']
    assert lines[0] == f'classes (from {root / "data.yaml"}): {", ".join(CLASSES)}'
    for split in ('train', 'val'):
        coco = json.loads(Path(written[split]).read_text())
        assert boxes_by_image(coco) == boxes_by_image(reference[split])
        assert coco['images'][0]['file_name'] == f'images/{split}/000001.png'


def test_yolo_classes_txt_and_flat_layout(tmp_path, reference):
    root = make(tmp_path, 'yolo')
    (root / 'data.yaml').unlink()
    (root / 'classes.txt').write_text('\n'.join(CLASSES) + '\n')
    written = convert_yolo(str(root), str(tmp_path / 'out'), splits=['val'], log=lambda line: None)
    assert list(written) == ['val']
    assert boxes_by_image(json.loads(Path(written['val']).read_text())) == boxes_by_image(reference['val'])


def test_voc_plain_folder_of_xml_files_and_class_order(tmp_path, reference):
    """A folder of XML files next to their images (labelImg's layout); without --classes the names found are the
    classes, alphabetically."""
    root = make(tmp_path, 'voc')
    folder = tmp_path / 'labelled'
    folder.mkdir()
    train_ids = (root / 'VOC2007' / 'ImageSets' / 'Main' / 'train.txt').read_text().split()
    for image_id in train_ids:
        os.replace(root / 'VOC2007' / 'Annotations' / f'{image_id}.xml', folder / f'{image_id}.xml')
        os.replace(root / 'VOC2007' / 'JPEGImages' / f'{image_id}.png', folder / f'{image_id}.png')
    lines = []
    written = convert_voc(str(folder), str(tmp_path / 'out'), log=lines.append)
    coco = json.loads(Path(written['labelled']).read_text())
    found = {CLASSES[ann['category_id'] - 1] for ann in reference['train']['annotations']}
    assert [c['name'] for c in coco['categories']] == sorted(found)
    assert lines[0].startswith('classes (every object name found, alphabetically')
    assert boxes_by_image(coco) == boxes_by_image(reference['train'])


def edit_first_object(xml: Path, old: str, new: str) -> None:
    text = xml.read_text()
    assert old in text, (old, text)
    xml.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize('difficult, iscrowd, objects', [('ignore', [1], 0), ('keep', [0], 1), ('drop', [], 0)])
def test_voc_difficult_objects(tmp_path, difficult, iscrowd, objects):
    root = make(tmp_path, 'voc')
    xml = root / 'VOC2007' / 'Annotations' / '000001.xml'
    text = xml.read_text()
    xml.write_text(text[:text.index('<object>')] + text[text.index('<object>'):text.index('</object>') + 9] +
                   '\n</annotation>\n')  # one object
    edit_first_object(xml, '<difficult>0</difficult>', '<difficult>1</difficult>')
    lines = []
    written = convert_voc(str(root), str(tmp_path / 'out'), classes=CLASSES, splits=['train'], difficult=difficult,
                          log=lines.append)
    coco = json.loads(Path(written['voc07_train']).read_text())
    assert [ann['iscrowd'] for ann in coco['annotations'] if ann['image_id'] == 1] == iscrowd
    report = check_coco_file(written['voc07_train'], str(root), CLASSES)
    assert sum(report.objects_per_class.values()) == objects + sum(
        1 for ann in coco['annotations'] if ann['image_id'] != 1)
    assert ('1 difficult objects written with iscrowd=1 (ignored)' in lines[-1]) == (difficult == 'ignore')


@pytest.mark.parametrize('edit, message', [
    (('<name>', '<name>dgo'), r"000001.xml: object 1 has the unknown class 'dgo\w+' \(the class list: red_box"),
    (('<xmin>', '<xmin>-5'), r'000001.xml: object 1 \(\w+\): box x1 y1 x2 y2 = \[-\d+\.0, .* reaches \d+ px outside '
                             r'the 128x96 image'),
    (('<width>128', '<width>96'), r'000001.xml: <size> is 96x96, but the image .*000001.png decodes to 128x96'),
    (('<filename>000001.png', '<filename>missing.png'), r'000001.xml annotates .*missing.png, which does not exist'),
    (('<bndbox>', '<bndbox><broken>'), r'000001.xml is not a readable XML file'),
], ids=['unknown-class', 'outside', 'size-mismatch', 'missing-image', 'not-xml'])
def test_voc_errors_name_the_file(tmp_path, edit, message):
    root = make(tmp_path, 'voc')
    xml = root / 'VOC2007' / 'Annotations' / '000001.xml'
    if edit[0] == '<filename>000001.png':  # a plain folder names its images by <filename>
        folder = root / 'VOC2007' / 'Annotations'
        edit_first_object(xml, *edit)
        with pytest.raises(ConversionError, match=message):
            convert_voc(str(folder), str(tmp_path / 'out'), classes=CLASSES,
                        img_dir=str(root / 'VOC2007' / 'JPEGImages'), log=lambda line: None)
        return
    edit_first_object(xml, *edit)
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'voc07_train.json').write_text('{"previous": true}')
    with pytest.raises(ConversionError, match=message):
        convert_voc(str(root), str(tmp_path / 'out'), classes=CLASSES, log=lambda line: None)
    assert json.loads((tmp_path / 'out' / 'voc07_train.json').read_text()) == {'previous': True}  # untouched
    assert sorted(p.name for p in (tmp_path / 'out').iterdir()) == ['voc07_train.json']  # no partial file


def test_voc_size_of_an_exif_rotated_image(tmp_path):
    """A JPEG whose EXIF orientation turns it is decoded turned (as mmdet's loader does): an XML with the unturned
    size is refused, the message says why."""
    root = make(tmp_path, 'voc')
    png = root / 'VOC2007' / 'JPEGImages' / '000001.png'
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when displayed
    with Image.open(png) as image:
        image.save(png.with_suffix('.jpg'), exif=exif)
    png.unlink()
    assert decoded_image_size(str(png.with_suffix('.jpg'))) == (IMG_SIZE[0], IMG_SIZE[1])  # width, height swapped
    xml = root / 'VOC2007' / 'Annotations' / '000001.xml'
    edit_first_object(xml, '<filename>000001.png', '<filename>000001.jpg')
    with pytest.raises(ConversionError, match=r'<size> is 128x96, but the image .*000001.jpg decodes to 96x128 \(its '
                       r'EXIF orientation turns it'):
        convert_voc(str(root), str(tmp_path / 'out'), classes=CLASSES, log=lambda line: None)


@pytest.mark.parametrize('line, message', [
    ('7 0.5 0.5 0.2 0.2', r'000001.txt line 1: unknown class index 7 \(the class list has 3 classes, 0..2\)'),
    ('0 0.95 0.5 0.3 0.2', r'000001.txt line 1 \(class 0\): box .* reaches \d+(\.\d+)? px outside the 128x96 image'),
    ('0 0.5 0.5 0.2', r'000001.txt line 1: 4 values, expected 5 \(class cx cy w h\)'),
    ('0 0.1 0.1 0.2 0.1 0.2 0.2', r'7 values, expected 5 .*; segmentation labels are not converted'),
    ('zero 0.5 0.5 0.2 0.2', r"000001.txt line 1: 'zero 0.5 0.5 0.2 0.2' is not \"class cx cy w h\""),
    ('0 0.5 0.5 0.0 0.2', r'000001.txt line 1 \(class 0\): box .* is 0x19.2 px'),
], ids=['unknown-class', 'outside', 'too-few', 'segmentation', 'not-numbers', 'empty-box'])
def test_yolo_label_errors_name_the_file_and_line(tmp_path, line, message):
    root = make(tmp_path, 'yolo')
    (root / 'labels' / 'train' / '000001.txt').write_text(line + '\n')
    with pytest.raises(ConversionError, match=message):
        convert_yolo(str(root), str(tmp_path / 'out'), log=lambda text: None)
    assert not (tmp_path / 'out').exists() or not list((tmp_path / 'out').iterdir())


def test_yolo_missing_image_and_background_images(tmp_path):
    root = make(tmp_path, 'yolo')
    (root / 'labels' / 'val' / '000001.txt').unlink()  # a background image: kept without objects
    lines = []
    written = convert_yolo(str(root), str(tmp_path / 'out'), splits=['val'], log=lines.append)
    coco = json.loads(Path(written['val']).read_text())
    assert len(coco['images']) == NUM_VAL and not [ann for ann in coco['annotations'] if ann['image_id'] == 1]
    assert '1 images without a label file (background images)' in lines[-1]
    (root / 'images' / 'train' / '000002.png').unlink()
    with pytest.raises(ConversionError, match=r'1 label files of .*labels/train have no image in .*images/train: '
                       r'000002.txt'):
        convert_yolo(str(root), str(tmp_path / 'out'), log=lambda text: None)
    with pytest.raises(ConversionError, match=r'has no split test \(it has: train, val\)'):
        convert_yolo(str(root), str(tmp_path / 'out'), splits=['test'], log=lambda text: None)


def test_converter_tools_exit_with_one_line(tmp_path, capsys):
    """The tools print ``<tool>: error: <message>`` and return 2; on success the summary and 0."""
    root = make(tmp_path, 'yolo')
    yolo2coco = load_tool_module('dataset_converters/yolo2coco')
    assert yolo2coco.main([str(root)]) == 0
    assert f'{root / "annotations" / "train.json"}: {NUM_TRAIN} images' in capsys.readouterr().out
    assert yolo2coco.main([str(root), '--classes', str(tmp_path / 'nothing.txt')]) == 2
    assert capsys.readouterr().err == f'yolo2coco.py: error: class list not found: {tmp_path / "nothing.txt"}\n'
    voc_root = make(tmp_path, 'voc')
    voc2coco = load_tool_module('dataset_converters/voc2coco')
    (tmp_path / 'classes.txt').write_text('\n'.join(CLASSES))
    assert voc2coco.main([str(voc_root), '--classes', str(tmp_path / 'classes.txt'), '-o', str(tmp_path / 'a')]) == 0
    assert voc2coco.main([str(voc_root), '--classes', 'red_box', '-o', str(tmp_path / 'b')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('voc2coco.py: error: ') and 'has the unknown class' in err
    assert '(the class list: red_box)' in err
    assert voc2coco.main([str(voc_root), '--classes', str(tmp_path / 'typo.txt')]) == 2
    assert capsys.readouterr().err == f'voc2coco.py: error: class list not found: {tmp_path / "typo.txt"}\n'
    (tmp_path / 'file').write_text('not a folder')  # an output folder that cannot be made: named before the work
    for tool, data in ((voc2coco, voc_root), (yolo2coco, root)):
        with pytest.raises(OutputPathError, match=f'--out-dir {tmp_path}/file/coco: {tmp_path}/file is a regular file'):
            tool.main([str(data), '-o', str(tmp_path / 'file' / 'coco')])


# ----------------------------------------------------------------------------- the data check counts objects
def test_data_check_counts_objects_per_class_and_warns_about_empty_classes(tmp_path, reference):
    path = tmp_path / 'train.json'
    coco = dict(reference['train'])
    missing = 'blue_wedge'
    missing_id = CLASSES.index(missing) + 1
    coco['annotations'] = [dict(ann, iscrowd=1) if ann['category_id'] == 1 and i == 0 else ann
                           for i, ann in enumerate(a for a in coco['annotations'] if a['category_id'] != missing_id)]
    path.write_text(json.dumps(coco))
    report = check_coco_file(str(path), None, CLASSES, DataCheckPolicy(), training=True)
    expected = {name: sum(1 for ann in coco['annotations'] if ann['category_id'] == index + 1 and not ann['iscrowd'])
                for index, name in enumerate(CLASSES)}
    assert report.objects_per_class == expected and expected[missing] == 0
    assert any(f'1 of the {len(CLASSES)} classes have no object in this file ({missing}): the model gets no positive '
               'example of them' in warning for warning in report.warnings)
    report = check_coco_file(str(path), None, CLASSES, DataCheckPolicy(), training=False)
    assert any('their AP cannot be measured' in warning for warning in report.warnings)
    (tmp_path / 'full.json').write_text(json.dumps(reference['train']))
    full = check_coco_file(str(tmp_path / 'full.json'), None, CLASSES, training=True)
    assert not any('have no object' in warning for warning in full.warnings)
    assert np.all(np.array(list(full.objects_per_class.values())) > 0)
