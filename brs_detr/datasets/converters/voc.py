"""Pascal VOC XML annotations to COCO JSON (``tools/dataset_converters/voc2coco.py``).

Three layouts are read:

* a VOC devkit (``VOCdevkit/`` holding ``VOC2007/``, ``VOC2012/``): one file per year and split listed in
  ``VOC<year>/ImageSets/Main/<split>.txt``, named as mmdet's converter names them (``voc07_train.json``), with
  ``file_name`` relative to the devkit (``VOC2007/JPEGImages/000005.jpg``);
* one year's folder (``VOC2007/`` with ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/``): ``<split>.json``
  per split (every XML into ``all.json`` without ``ImageSets``), ``file_name`` relative to that folder;
* a plain folder of XML files (what labelImg and CVAT export): ``<folder name>.json``, the image of each file is its
  ``<filename>`` under the image folder (by default the XML folder itself), relative to it.

Boxes: VOC numbers pixels from 1 and ``xmax`` is the last pixel of the box, so COCO's ``x = xmin - 1`` and
``w = xmax - xmin + 1`` (mmdet's ``pascal_voc.py`` loses the last pixel: ``w = xmax - xmin``). ``<difficult>1``
objects are written with ``iscrowd=1`` by default, as mmdet's converter does: neither trained on nor counted in
the evaluation (``difficult='keep'`` trains them as normal objects, ``'drop'`` leaves them out). ``<truncated>``
objects are normal objects (VOC boxes the visible part). The ``<size>`` of the XML must be the size of the decoded
image (EXIF orientation applied), else the boxes would be misplaced.
"""
from __future__ import annotations

import os
import os.path as osp
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .coco_output import Box, ConversionError, ImageEntry, checked_box, decoded_image_size, summary, write_coco_file

#: What ``difficult`` objects become: ``iscrowd=1`` (ignored), normal objects, or nothing.
DIFFICULT_POLICIES = ('ignore', 'keep', 'drop')
#: The splits of ``ImageSets/Main`` (their order in the output).
VOC_SPLITS = ('train', 'val', 'trainval', 'test')
#: Image file extension VOC uses when an XML names no file.
VOC_IMAGE_EXTENSION = '.jpg'


@dataclass
class VocObject:
    """One ``<object>`` of an XML file (VOC's 1-based, inclusive pixel coordinates)."""
    name: str
    difficult: bool
    xmin: float
    ymin: float
    xmax: float
    ymax: float


@dataclass
class VocFile:
    """One parsed XML file: the image it annotates and its objects."""
    xml_path: str
    filename: Optional[str]
    size: Optional[Tuple[int, int]]
    objects: List[VocObject]


@dataclass
class VocJob:
    """One output file: which XML files go into it and how their images are named."""
    name: str
    xml_paths: List[str]
    #: XML path -> image path relative to ``img_root``.
    image_names: Dict[str, str]
    img_root: str


def _text(element: Optional[ElementTree.Element], tag: str) -> Optional[str]:
    child = element.find(tag) if element is not None else None
    return child.text.strip() if child is not None and child.text is not None else None


def _number(element: ElementTree.Element, tag: str, xml_path: str, where: str) -> float:
    text = _text(element, tag)
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ConversionError(f'{xml_path}: {where} has no number in <{tag}> (got {text!r})') from None


def parse_voc_xml(xml_path: str) -> VocFile:
    """Read one VOC XML file.

    Raises:
        ConversionError: Not XML, an object without name or box, a box coordinate that is not a number.
    """
    try:
        root = ElementTree.parse(xml_path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise ConversionError(f'{xml_path} is not a readable XML file: {error}') from error
    size = None
    size_element = root.find('size')
    if size_element is not None:
        width, height = (_text(size_element, tag) for tag in ('width', 'height'))
        if width and height and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0:
            size = (int(width), int(height))
    objects = []
    for index, element in enumerate(root.findall('object'), start=1):
        where = f'object {index}'
        name = _text(element, 'name')
        if not name:
            raise ConversionError(f'{xml_path}: {where} has no <name>')
        box = element.find('bndbox')
        if box is None:
            raise ConversionError(f'{xml_path}: {where} ({name}) has no <bndbox>')
        difficult = _text(element, 'difficult') or '0'
        objects.append(VocObject(name, difficult not in ('0', 'false', 'False'),
                                 *(_number(box, tag, xml_path, f'{where} ({name})')
                                   for tag in ('xmin', 'ymin', 'xmax', 'ymax'))))
    return VocFile(xml_path, _text(root, 'filename'), size, objects)


def _split_ids(year_dir: str, split: str) -> List[str]:
    path = osp.join(year_dir, 'ImageSets', 'Main', f'{split}.txt')
    with open(path, encoding='utf-8') as file:
        return [line.split()[0] for line in file if line.strip()]


def _year_dirs(devkit: str) -> List[str]:
    return sorted(name for name in os.listdir(devkit) if name.startswith('VOC') and name[3:].isdigit()
                  and osp.isdir(osp.join(devkit, name, 'Annotations')))


def _year_jobs(year_dir: str, img_root: str, prefix: str, splits: Optional[Sequence[str]]) -> List[VocJob]:
    """One job per split of a ``VOC<year>`` folder; ``prefix`` names the outputs (``voc07_``) and the images'
    folder relative to ``img_root``."""
    sets = osp.join(year_dir, 'ImageSets', 'Main')
    available = [split for split in VOC_SPLITS if osp.isfile(osp.join(sets, f'{split}.txt'))]
    wanted = list(splits) if splits else available
    missing = [split for split in wanted if split not in available]
    if missing:
        raise ConversionError(f'{sets} has no {", ".join(f"{split}.txt" for split in missing)} (it has: '
                              f'{", ".join(f"{split}.txt" for split in available) or "none"})')
    relative = osp.relpath(year_dir, img_root)
    jobs = []
    if not wanted:  # no ImageSets: every XML file
        ids = sorted(osp.splitext(name)[0] for name in os.listdir(osp.join(year_dir, 'Annotations'))
                     if name.endswith('.xml'))
        wanted_ids = [('all', ids)]
    else:
        wanted_ids = [(split, _split_ids(year_dir, split)) for split in wanted]
    for split, ids in wanted_ids:
        xml_paths = [osp.join(year_dir, 'Annotations', f'{image_id}.xml') for image_id in ids]
        images = {}
        for image_id, xml_path in zip(ids, xml_paths):
            if not osp.isfile(xml_path):
                raise ConversionError(f'{osp.join(sets, split + ".txt")} lists {image_id}, but {xml_path} does not '
                                      'exist')
            images[xml_path] = osp.normpath(osp.join(relative, 'JPEGImages', image_id + VOC_IMAGE_EXTENSION))
        jobs.append(VocJob(f'{prefix}{split}', xml_paths, images, img_root))
    return jobs


def plan_voc_conversion(input_dir: str, img_dir: Optional[str] = None, years: Optional[Sequence[str]] = None,
                        splits: Optional[Sequence[str]] = None) -> List[VocJob]:
    """The output files for ``input_dir``: a devkit, one year's folder or a plain folder of XML files.

    Raises:
        ConversionError: Nothing to convert, a split or year that is not there.
    """
    if not osp.isdir(input_dir):
        raise ConversionError(f'input folder not found: {input_dir}')
    year_dirs = _year_dirs(input_dir)
    if year_dirs:  # a devkit
        if years:
            wanted = [f'VOC{year}' for year in years]
            absent = [name for name in wanted if name not in year_dirs]
            if absent:
                raise ConversionError(f'{input_dir} has no {", ".join(absent)} (it has: {", ".join(year_dirs)})')
            year_dirs = wanted
        return [job for name in year_dirs
                for job in _year_jobs(osp.join(input_dir, name), input_dir, f'voc{name[-2:]}_', splits)]
    if osp.isdir(osp.join(input_dir, 'Annotations')):  # one year's folder
        return _year_jobs(input_dir, input_dir, '', splits)
    xml_names = sorted(name for name in os.listdir(input_dir) if name.endswith('.xml'))
    if not xml_names:
        raise ConversionError(f'{input_dir} holds no VOC data: neither VOC<year>/ folders (a devkit), nor '
                              'Annotations/ (one year), nor .xml files')
    if splits:
        raise ConversionError('--splits needs a VOC devkit or year folder with ImageSets/Main; a plain folder of XML '
                              'files is converted as a whole')
    xml_paths = [osp.join(input_dir, name) for name in xml_names]
    name = osp.basename(osp.normpath(input_dir))
    return [VocJob(name, xml_paths, {}, img_dir or input_dir)]


def _image_name(job: VocJob, parsed: VocFile) -> str:
    if parsed.xml_path in job.image_names:
        planned = job.image_names[parsed.xml_path]
        if parsed.filename:  # the devkit's own file name wins over <id>.jpg (e.g. .png images)
            named = osp.join(osp.dirname(planned), parsed.filename)
            if osp.isfile(osp.join(job.img_root, named)):
                return osp.normpath(named)
        return planned
    if not parsed.filename:
        raise ConversionError(f'{parsed.xml_path} has no <filename>: cannot tell which image it annotates')
    return parsed.filename


def _image_entry(job: VocJob, parsed: VocFile, label_of: Dict[str, int], difficult: str) -> Tuple[ImageEntry, int]:
    """The image of one XML file, its boxes checked; and how many difficult objects became ``iscrowd``."""
    file_name = _image_name(job, parsed)
    image_path = osp.join(job.img_root, file_name)
    if not osp.isfile(image_path):
        raise ConversionError(f'{parsed.xml_path} annotates {image_path}, which does not exist')
    width, height = decoded_image_size(image_path)
    if parsed.size is not None and parsed.size != (width, height):
        turned = ' (its EXIF orientation turns it: the boxes may be drawn on the unturned image)' \
            if parsed.size == (height, width) else ''
        raise ConversionError(f'{parsed.xml_path}: <size> is {parsed.size[0]}x{parsed.size[1]}, but the image '
                              f'{image_path} decodes to {width}x{height}{turned}')
    entry = ImageEntry(file_name, width, height)
    ignored = 0
    for index, obj in enumerate(parsed.objects, start=1):
        if obj.difficult and difficult == 'drop':
            continue
        where = f'{parsed.xml_path}: object {index} ({obj.name})'
        x1, y1, x2, y2 = checked_box(obj.xmin - 1, obj.ymin - 1, obj.xmax, obj.ymax, width, height, where)
        iscrowd = obj.difficult and difficult == 'ignore'
        ignored += iscrowd
        entry.boxes.append(Box(label_of[obj.name], x1, y1, x2, y2, iscrowd=iscrowd))
    return entry, ignored


def _class_list(parsed: Sequence[VocFile], classes: Optional[Sequence[str]]) -> List[str]:
    """The given classes (every object's name must be one of them), else the names found, alphabetically."""
    if classes is None:
        names = sorted({obj.name for file in parsed for obj in file.objects})
        if not names:
            raise ConversionError('no object in any XML file: pass the class names with --classes')
        return names
    known = set(classes)
    for file in parsed:
        for index, obj in enumerate(file.objects, start=1):
            if obj.name not in known:
                raise ConversionError(f'{file.xml_path}: object {index} has the unknown class {obj.name!r} (the '
                                      f'class list: {", ".join(classes)})')
    return list(classes)


def convert_voc(input_dir: str, out_dir: str, classes: Optional[Sequence[str]] = None, img_dir: Optional[str] = None,
                years: Optional[Sequence[str]] = None, splits: Optional[Sequence[str]] = None,
                difficult: str = 'ignore', log=print) -> Dict[str, str]:
    """Convert VOC annotations under ``input_dir`` into COCO files in ``out_dir`` (see the module docstring).

    Args:
        input_dir: A VOC devkit, one year's folder or a folder of XML files.
        out_dir: Folder of the output files.
        classes: The class names in label order; every object must be one of them. Default: every name found,
            in alphabetical order (printed).
        img_dir: Image folder of a plain folder of XML files (default: that folder).
        years: The devkit years to convert (default: all).
        splits: The ``ImageSets/Main`` splits to convert (default: all that exist).
        difficult: One of :data:`DIFFICULT_POLICIES`.
        log: Receives the summary lines.

    Returns:
        Output name -> written file.

    Raises:
        ConversionError: The first problem found, naming its file.
    """
    if difficult not in DIFFICULT_POLICIES:
        raise ConversionError(f'difficult must be one of {DIFFICULT_POLICIES}, got {difficult!r}')
    jobs = plan_voc_conversion(input_dir, img_dir, years, splits)
    parsed = {path: parse_voc_xml(path) for job in jobs for path in job.xml_paths}
    class_names = _class_list(list(parsed.values()), classes)
    if classes is None:
        log(f'classes (every object name found, alphabetically; pass --classes to fix the order): '
            f'{", ".join(class_names)}')
    label_of = {name: index for index, name in enumerate(class_names)}
    written = {}
    for job in jobs:
        entries, ignored = [], 0
        for path in job.xml_paths:
            entry, crowd = _image_entry(job, parsed[path], label_of, difficult)
            entries.append(entry)
            ignored += crowd
        out_file = osp.join(out_dir, f'{job.name}.json')
        report = write_coco_file(entries, class_names, out_file, job.img_root, f'converted from VOC {input_dir}')
        notes = [f'{ignored} difficult objects written with iscrowd=1 (ignored)'] if ignored else []
        log(summary(out_file, report, notes + [f'file names relative to {job.img_root}']))
        written[job.name] = out_file
    return written
