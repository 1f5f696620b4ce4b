"""Image inputs of the inference demo: files, folders and glob patterns, and the names of their outputs.

mmdet's :class:`~mmdet.apis.DetInferencer` accepts one file or one folder (case-sensitive extensions, no
recursion) and names its outputs after each input's base name, so ``a/x.jpg`` and ``b/x.jpg`` overwrite each other's
results. Here the inputs are expanded up front, before the model is built, so that a typo or an unreadable file fails
in a second with its name instead of after the model has loaded; every image gets a distinct output name.
"""
from __future__ import annotations

import glob
import os
import os.path as osp
from collections import defaultdict
from typing import Dict, Iterable, List, Sequence

import cv2

from .cli import ToolInputError

#: Image file extensions looked for in folders and glob matches (mmdet's ``IMG_EXTENSIONS``, compared
#: case-insensitively).
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')


class ImageInputError(ToolInputError):
    """An input names no image, or an image cannot be read. The message names the input."""


def is_image_file_name(path: str) -> bool:
    """Whether ``path`` ends in one of :data:`IMG_EXTENSIONS` (any case)."""
    return path.lower().endswith(IMG_EXTENSIONS)


def check_image_readable(path: str) -> None:
    """Fail with the file's name unless ``path`` is a readable file whose header OpenCV can decode.

    Only the header is checked (:func:`cv2.haveImageReader`); a file truncated after a valid header is reported when
    it is decoded (see :class:`~brs_detr.apis.det_inferencer.BRSDetInferencer`).
    """
    if not osp.isfile(path):
        raise ImageInputError(f'image not found: {path}')
    if not os.access(path, os.R_OK):
        raise ImageInputError(f'cannot read image {path}: permission denied')
    if not cv2.haveImageReader(path):
        raise ImageInputError(f'cannot read image {path}: not an image file OpenCV can decode '
                              f'(expected one of {", ".join(IMG_EXTENSIONS)})')


def _images_in_folder(folder: str) -> List[str]:
    names = sorted(name for name in os.listdir(folder)
                   if is_image_file_name(name) and osp.isfile(osp.join(folder, name)))
    if not names:
        raise ImageInputError(f'no image ({", ".join(IMG_EXTENSIONS)}) in folder {folder}')
    return [osp.join(folder, name) for name in names]


def _images_matching(pattern: str) -> List[str]:
    matches = sorted(path for path in glob.glob(pattern, recursive=True)
                     if osp.isfile(path) and is_image_file_name(path))
    if not matches:
        raise ImageInputError(f'no image matched the pattern {pattern!r} (extensions {", ".join(IMG_EXTENSIONS)}; '
                              f'quote the pattern so that the shell does not expand it)')
    return matches


def collect_images(inputs: Iterable[str], check_readable: bool = True) -> List[str]:
    """Expand files, folders and glob patterns into a list of image files.

    Args:
        inputs: Each item is an image file (any extension), a folder (its images, not recursive) or a glob pattern
            (``*``, ``?``, ``[...]``; ``**`` recurses), as the user typed it.
        check_readable: Check that every image exists and has a decodable header (:func:`check_image_readable`).

    Returns:
        The image paths in input order (folders and patterns sorted), each once.

    Raises:
        ImageInputError: An item matches nothing (the message names it), or an image cannot be read.
    """
    images: List[str] = []
    for item in inputs:
        if osp.isdir(item):
            images.extend(_images_in_folder(item))
        elif osp.isfile(item):
            images.append(item)
        elif glob.has_magic(item):
            images.extend(_images_matching(item))
        else:
            raise ImageInputError(f'no such image file or folder: {item}')
    unique = list(dict.fromkeys(images))
    if not unique:
        raise ImageInputError('no input image given')
    if check_readable:
        for path in unique:
            check_image_readable(path)
    return unique


def _flattened(path: str) -> str:
    """``path`` as one file-name-safe component: separators and dots become ``_``."""
    drive_less = osp.splitdrive(path)[1].strip(os.sep + (os.altsep or ''))
    for separator in {os.sep, os.altsep or os.sep, '.'}:
        drive_less = drive_less.replace(separator, '_')
    return drive_less


def output_names(paths: Sequence[str]) -> Dict[str, str]:
    """A distinct output name (no extension) for every image path.

    An image's name is its file stem (``dir/000001.png`` -> ``000001``, as mmdet names its results). When several
    images share a stem (``a/x.jpg``, ``b/x.jpg``, ``a/x.png``), each of them is named after its path relative to
    their common folder, with separators and dots replaced by ``_`` (``a_x_jpg``, ``b_x_jpg``, ``a_x_png``); a name
    that still clashes gets its input position appended.

    Args:
        paths: Image paths, each once.

    Returns:
        path -> output name.
    """
    by_stem: Dict[str, List[str]] = defaultdict(list)
    for path in paths:
        by_stem[osp.splitext(osp.basename(path))[0]].append(path)
    names: Dict[str, str] = {}
    for stem, group in by_stem.items():
        if len(group) == 1:
            names[group[0]] = stem
            continue
        absolute = [osp.abspath(path) for path in group]
        common = osp.commonpath([osp.dirname(path) for path in absolute])
        for path, abs_path in zip(group, absolute):
            names[path] = _flattened(osp.relpath(abs_path, common))
    used: Dict[str, int] = defaultdict(int)
    for path in paths:
        used[names[path]] += 1
    for index, path in enumerate(paths):
        if used[names[path]] > 1:
            names[path] = f'{names[path]}_{index}'
    return names
