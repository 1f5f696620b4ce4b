"""Image loading whose errors say which image, which annotation file names it, and what is wrong with it."""
from __future__ import annotations

import os
import os.path as osp
from typing import Optional

from mmcv.transforms import LoadImageFromFile

from mmdet.registry import TRANSFORMS


class ImageLoadError(OSError):
    """An image of the dataset cannot be read or decoded, or its size is not the annotated one."""


#: mmcv decoding flag -> the same without applying the EXIF orientation (``unchanged`` never applies it).
IGNORE_ORIENTATION = {'color': 'color_ignore_orientation', 'grayscale': 'grayscale_ignore_orientation'}


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """mmcv's :class:`~mmcv.transforms.LoadImageFromFile` with errors that name the image, the annotation file and
    the cause, that decodes the stored pixels, and that checks their size against the annotation.

    * The EXIF orientation tag is ignored (``color_type`` ``'color'`` -> ``'color_ignore_orientation'``, the same
      for ``'grayscale'``): boxes are annotated on the stored pixels (mmdet's and COCO's convention). mmcv's default
      decoding rotates the pixels of a tagged JPEG and leaves its boxes where they were.
    * ``check_size``: the decoded image must be ``height`` x ``width`` of its annotation (``results['height']``,
      ``['width']``, set by COCO-format datasets); otherwise :class:`ImageLoadError` names the file, the image id,
      the annotated and the decoded size (a file replaced by a resized or turned copy trains on boxes that do not
      fit its pixels).

    Same arguments as the parent plus ``ann_file`` and ``check_size`` (set by the tools). mmcv ends a corrupt image
    with
    ``AssertionError: failed to load image: PATH`` and a missing one with the backend's ``FileNotFoundError``, deep in
    a DataLoader traceback; here both become :class:`ImageLoadError` ``cannot load image PATH (image id N,
    listed in ANN_FILE): the file is not a decodable image (B bytes: truncated or corrupt?)``. With
    ``ignore_empty=True`` the parent's behaviour (skip the sample) is kept.

    Args:
        ann_file: The annotation file of the dataset (only for messages).
        check_size: Compare the decoded size with the annotation's (``data_check.check_image_sizes``).
    """

    def __init__(self, *args, ann_file: Optional[str] = None, check_size: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ann_file = ann_file
        self.check_size = check_size
        self.color_type = IGNORE_ORIENTATION.get(self.color_type, self.color_type)

    def _cause(self, path: str, error: BaseException) -> str:
        from ..image_headers import read_header, too_many_pixels
        size = read_header(path)[0] if osp.isfile(path) else None
        if size is not None and too_many_pixels(size):
            return f'the image is {too_many_pixels(size)}'
        if isinstance(error, AssertionError) or not isinstance(error, OSError):
            size = osp.getsize(path) if osp.isfile(path) else None
            if size is not None:
                return (f'the file is not a decodable image ({size} bytes: truncated or corrupt?)'
                        + ('' if isinstance(error, AssertionError) else f': {error}'))
        if not osp.exists(path):
            return 'the file does not exist'
        if not os.access(path, os.R_OK):
            return 'the file cannot be read (permissions)'
        return str(error)

    def _where(self, results: dict) -> str:
        source = f', listed in {self.ann_file}' if self.ann_file else ''
        return f'{results.get("img_path", "?")} (image id {results.get("img_id", "?")}{source})'

    def transform(self, results: dict) -> Optional[dict]:
        try:
            loaded = super().transform(results)
        except Exception as error:  # noqa: B902  (any backend or decoder error; re-raised with context)
            raise ImageLoadError(f'cannot load image {self._where(results)}: '
                                 f'{self._cause(results.get("img_path", "?"), error)}') from error
        annotated = (results.get('width'), results.get('height'))
        if self.check_size and loaded is not None and all(isinstance(v, int) for v in annotated):
            decoded = (loaded['img'].shape[1], loaded['img'].shape[0])
            if decoded != annotated:
                from ..image_headers import size_mismatch_hint
                raise ImageLoadError(f'image {self._where(results)} is {decoded[0]}x{decoded[1]} (width x height) but '
                                     f'its annotation says {annotated[0]}x{annotated[1]}: its boxes would not fit its '
                                     f'pixels{size_mismatch_hint(decoded, annotated, None)}')
        return loaded
