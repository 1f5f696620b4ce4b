"""Drawing helpers shared by the demo and the dataset browser: the visualizer config and atomic PNG files."""
from __future__ import annotations

import cv2
import numpy as np
from mmengine.config import Config, ConfigDict

from brs_detr.fileio.atomic_io import atomic_write_bytes

#: The visualizer used when a config names none (mmdet's, with its defaults).
DEFAULT_VISUALIZER = dict(type='DetLocalVisualizer')


def visualizer_config(cfg: Config) -> ConfigDict:
    """The config's ``visualizer`` (``DetLocalVisualizer`` if it has none) without vis backends or ``save_dir``.

    The tools save their own PNG files; the config's backends (``LocalVisBackend`` needs a ``save_dir`` and warns
    without one, TensorBoard/W&B would log every image) are not wanted there.
    """
    visualizer_cfg = ConfigDict(cfg.get('visualizer') or DEFAULT_VISUALIZER)
    visualizer_cfg.vis_backends = []
    visualizer_cfg.pop('save_dir', None)
    return visualizer_cfg


def write_png(image_rgb: np.ndarray, path: str) -> None:
    """Write an RGB uint8 image (H, W, 3) to ``path`` as a PNG file, atomically (creating its folder)."""
    ok, encoded = cv2.imencode('.png', np.ascontiguousarray(image_rgb[..., ::-1]))
    if not ok:
        raise OSError(f'OpenCV could not encode {path} as PNG')
    atomic_write_bytes(encoded.tobytes(), path)
