"""The size and EXIF orientation of image files, read from their headers, checked against the annotation file.

Convention (mmdet's and COCO's): boxes are annotated on the *stored* pixels. brs-detr's image loader ignores the EXIF
orientation tag (:class:`~brs_detr.datasets.transforms.CheckedLoadImageFromFile`; mmcv's default decoding would
rotate the pixels of a tagged JPEG and leave its boxes where they were), and this check agrees: it compares the
stored size with the annotation's ``width``/``height``, and says once how many images carry an orientation tag.
"""
from __future__ import annotations

import os
import os.path as osp
from collections import Counter
from typing import Iterable, List, Optional, Tuple

#: The EXIF tag of the orientation.
EXIF_ORIENTATION_TAG = 0x0112
#: Orientations that turn the image by 90 degrees (displayed width and height are swapped).
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)
#: How many mismatches an error lists.
MAX_LISTED = 5
#: OpenCV's default limit on the pixels of an image it decodes (mmcv's default backend); the environment variable
#: ``CV_IO_MAX_IMAGE_PIXELS`` changes it.
OPENCV_MAX_PIXELS = 1 << 30


#: Pillow modes of TIFF files whose 32-bit samples OpenCV refuses ("can not handle images with 32-bit samples").
OPENCV_UNDECODABLE_TIFF_MODES = ('F', 'I')


def decodable_pixels() -> int:
    """The most pixels an image may have for OpenCV to decode it (``CV_IO_MAX_IMAGE_PIXELS``, default 2^30)."""
    try:
        return int(os.environ.get('CV_IO_MAX_IMAGE_PIXELS', OPENCV_MAX_PIXELS))
    except ValueError:
        return OPENCV_MAX_PIXELS


def too_many_pixels(size: Tuple[int, int]) -> Optional[str]:
    """Why an image of ``size`` (width, height) cannot be decoded by OpenCV (``None``: it can)."""
    limit = decodable_pixels()
    if size[0] * size[1] <= limit:
        return None
    return (f'{size[0]}x{size[1]} = {size[0] * size[1]:,} pixels, more than OpenCV decodes (CV_IO_MAX_IMAGE_PIXELS='
            f'{limit:,}): set that environment variable higher, or cut the image into tiles')


def read_header(path: str) -> Tuple[Optional[Tuple[int, int]], Optional[int], Optional[str]]:
    """``((width, height), EXIF orientation or None, None)`` of an image file from its header only, or
    ``(None, None, what is wrong)`` when it is not an image Pillow can identify, or a TIFF of 32-bit samples, which
    Pillow reads but OpenCV (the loader's decoder) does not.

    Pillow's decompression-bomb limit (an error above 179 M pixels, a warning above 89 M) is lifted while the header
    is read: nothing is decoded here, and large aerial or slide images are legitimate (:func:`too_many_pixels` says
    which ones the loader cannot decode)."""
    from PIL import Image, UnidentifiedImageError

    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as image:
            size = image.size
            if image.format == 'TIFF' and image.mode in OPENCV_UNDECODABLE_TIFF_MODES:
                return None, None, (f'a TIFF of 32-bit samples (Pillow mode {image.mode}), which OpenCV, the decoder '
                                    f'of mmcv\'s image loading, cannot decode: convert it to 8 or 16 bits')
            orientation = None
            if image.format != 'PNG' or 'exif' in image.info:  # a PNG's full EXIF lookup would decode the image
                orientation = image.getexif().get(EXIF_ORIENTATION_TAG)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        return None, None, f'not an image Pillow can read ({type(error).__name__}: {error})'
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    return size, orientation if isinstance(orientation, int) and orientation != 1 else None, None


def size_mismatch_hint(stored: Tuple[int, int], annotated: Tuple[int, int], orientation: Optional[int]) -> str:
    """Why a stored size may differ from the annotated one (``''``: no idea)."""
    if stored[::-1] == tuple(annotated):
        tagged = f'the file has EXIF orientation {orientation}' if orientation in TRANSPOSING_ORIENTATIONS else \
            'turned by 90 degrees'
        return (f' ({tagged}: annotated on the image as displayed? brs-detr, like mmdet and COCO, trains on the stored '
                f'pixels: turn them to match, e.g. ImageMagick\'s mogrify -auto-orient, or annotate the stored image)')
    ratios = {round(a / s, 3) for s, a in zip(stored, annotated) if s}
    if len(ratios) == 1 and ratios != {1.0}:
        return f' (scaled by {ratios.pop():g}: the image was resized after it was annotated, or before?)'
    return ''


def check_image_headers(img_dir: str, images: Iterable[dict]) -> Tuple[List[str], Counter, List[str], List[str]]:
    """Read the header of every image of ``images`` (COCO ``images`` entries, files under ``img_dir``).

    Returns:
        ``(size mismatches, EXIF orientations found (value -> count), unreadable files, images too large to
        decode (:func:`too_many_pixels`))``, each mismatch as
        ``image id N (file): the file is WxH (width x height) but the annotation says WxH`` with a hint.
    """
    mismatches: List[str] = []
    unreadable: List[str] = []
    too_large: List[str] = []
    orientations: Counter = Counter()
    for image in images:
        path = osp.join(img_dir, image['file_name'])
        size, orientation, problem = read_header(path)
        if problem is not None:
            unreadable.append(f'{path}: {problem}')
            continue
        if too_many_pixels(size):
            too_large.append(f'image id {image["id"]} ({path}): {too_many_pixels(size)}')
        if orientation is not None:
            orientations[orientation] += 1
        annotated = (image['width'], image['height'])
        if tuple(size) != annotated:
            mismatches.append(f'image id {image["id"]} ({path}): the file is {size[0]}x{size[1]} (width x height) but '
                              f'the annotation says {annotated[0]}x{annotated[1]}'
                              f'{size_mismatch_hint(size, annotated, orientation)}')
    return mismatches, orientations, unreadable, too_large
