"""mmdet's DetVisualizationHook drawing on the pixels the model saw, with one output file per image."""
from __future__ import annotations

import os.path as osp
from typing import Dict, Optional, Sequence

import mmcv
import numpy as np
from mmengine.fileio import get
from mmengine.runner import Runner
from mmengine.utils import mkdir_or_exist

from mmdet.engine.hooks import DetVisualizationHook
from mmdet.registry import HOOKS
from mmdet.structures import DetDataSample

#: mmcv decoding flag of the stored pixels (the EXIF orientation tag ignored), as the training/test loader reads them.
STORED_PIXELS_FLAG = 'color_ignore_orientation'


@HOOKS.register_module()
class StoredPixelsVisualizationHook(DetVisualizationHook):
    """:class:`~mmdet.engine.hooks.DetVisualizationHook` (same arguments) with two changes, for ``tools/test.py
    --show-dir`` and the drawings of validation:

    * The image is read as :class:`~brs_detr.datasets.transforms.CheckedLoadImageFromFile` reads it for the model,
      ignoring the EXIF orientation tag. mmdet's hook decodes it turned as a viewer shows it, so the predicted boxes
      of a tagged JPEG were drawn on turned pixels.
    * Every image gets its own file under ``test_out_dir``: mmdet names the drawing after the image's base name, so
      ``cam0/0001.jpg`` and ``cam1/0001.jpg`` overwrote each other. The first keeps its base name; a later image of
      the same base name gets as many parent folders in front (``cam1_0001.jpg``) as it needs to be unique.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._out_names: Dict[str, str] = {}

    def _read(self, img_path: str) -> np.ndarray:
        """(H, W, 3) RGB uint8: the stored pixels of ``img_path``."""
        return mmcv.imfrombytes(get(img_path, backend_args=self.backend_args), flag=STORED_PIXELS_FLAG,
                                channel_order='rgb')

    def out_name(self, img_path: str) -> str:
        """The file name of the drawing of ``img_path``, distinct from those of the other images of this run."""
        parts = [part for part in img_path.replace('\\', '/').split('/') if part]
        for depth in range(1, len(parts) + 1):
            name = '_'.join(parts[-depth:])
            if self._out_names.setdefault(name, img_path) == img_path:
                return name
        return f'{len(self._out_names)}_{parts[-1]}'

    def after_val_iter(self, runner: Runner, batch_idx: int, data_batch: dict,
                       outputs: Sequence[DetDataSample]) -> None:
        """Draw the first image of every ``interval``-th validation batch (to the visualizer's backends)."""
        if self.draw is False:
            return
        step = runner.iter + batch_idx
        if step % self.interval == 0:
            img_path = outputs[0].img_path
            self._visualizer.add_datasample(osp.basename(img_path) if self.show else 'val_img', self._read(img_path),
                                            data_sample=outputs[0], show=self.show, wait_time=self.wait_time,
                                            pred_score_thr=self.score_thr, step=step)

    def after_test_iter(self, runner: Runner, batch_idx: int, data_batch: dict,
                        outputs: Sequence[DetDataSample]) -> None:
        """Draw every test image; save it as ``<work_dir>/<timestamp>/<test_out_dir>/<out_name>`` when set."""
        if self.draw is False:
            return
        out_dir: Optional[str] = None
        if self.test_out_dir is not None:
            out_dir = self.test_out_dir = osp.join(runner.work_dir, runner.timestamp, self.test_out_dir)
            mkdir_or_exist(out_dir)
        for data_sample in outputs:
            self._test_index += 1
            img_path = data_sample.img_path
            self._visualizer.add_datasample(
                osp.basename(img_path) if self.show else 'test_img', self._read(img_path), data_sample=data_sample,
                show=self.show, wait_time=self.wait_time, pred_score_thr=self.score_thr,
                out_file=osp.join(out_dir, self.out_name(img_path)) if out_dir else None, step=self._test_index)
