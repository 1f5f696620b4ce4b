"""Image loading whose errors say which image, which annotation file names it, and what is wrong with it."""
from __future__ import annotations

import os
import os.path as osp
from typing import Optional

from mmcv.transforms import LoadImageFromFile

from mmdet.registry import TRANSFORMS


class ImageLoadError(OSError):
    """An image of the dataset cannot be read or decoded."""


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """mmcv's :class:`~mmcv.transforms.LoadImageFromFile` with errors that name the image, the annotation file and
    the cause.

    Same arguments as the parent plus ``ann_file`` (set by the tools). mmcv ends a corrupt image with
    ``AssertionError: failed to load image: PATH`` and a missing one with the backend's ``FileNotFoundError``, deep in
    a DataLoader traceback; here both become :class:`ImageLoadError` ``cannot load image PATH (image id N,
    listed in ANN_FILE): the file is not a decodable image (B bytes: truncated or corrupt?)``. With
    ``ignore_empty=True`` the parent's behaviour (skip the sample) is kept.

    Args:
        ann_file: The annotation file of the dataset (only for messages).
    """

    def __init__(self, *args, ann_file: Optional[str] = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ann_file = ann_file

    def _cause(self, path: str, error: BaseException) -> str:
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

    def transform(self, results: dict) -> Optional[dict]:
        try:
            return super().transform(results)
        except Exception as error:  # noqa: B902  (any backend or decoder error; re-raised with context)
            path = results.get('img_path', '?')
            source = f', listed in {self.ann_file}' if self.ann_file else ''
            raise ImageLoadError(f'cannot load image {path} (image id {results.get("img_id", "?")}{source}): '
                                 f'{self._cause(path, error)}') from error
