"""Images as the exported graphs take them: resized by the config's test pipeline, with their scale factor."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple, Union

import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData
from torch import Tensor, nn

from mmdet.structures import DetDataSample
from mmdet.utils import get_test_pipeline_cfg

#: Image size (H, W) whose resize by the test pipeline gives the default export shape (a 4:3 camera frame).
DEFAULT_SOURCE_SIZE = (480, 640)
#: Pipeline steps that need annotations (dropped for inference).
ANNOTATION_STEPS = ('LoadAnnotations', 'mmdet.LoadAnnotations')


@dataclass
class ResizedImage:
    """One image ready for the exported graph (and for ``predict`` through :func:`pytorch_predict`).

    Attributes:
        name (str): For tables.
        pixels (Tensor): (3, H, W) uint8 BGR, resized by the test pipeline.
        scale_factor (tuple[float, float]): ``(w_scale, h_scale)`` = resized / original size.
        ori_shape (tuple[int, int]): The original ``(H, W)``.
    """
    name: str
    pixels: Tensor
    scale_factor: Tuple[float, float]
    ori_shape: Tuple[int, int]

    @property
    def shape(self) -> Tuple[int, int]:
        """The resized ``(H, W)``."""
        return tuple(self.pixels.shape[-2:])

    def graph_inputs(self) -> Tuple[Tensor, Tensor]:
        """``image`` (1, 3, H, W) float32 and ``scale_factor`` (2,) float32, as the exported graph takes them."""
        return self.pixels[None].float(), torch.tensor(self.scale_factor, dtype=torch.float32)


def build_test_pipeline(cfg: Config) -> Callable[[dict], dict]:
    """The config's test pipeline for inference: images from a file path or an array, no annotations."""
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    steps = [step for step in copy.deepcopy(get_test_pipeline_cfg(cfg)) if step['type'] not in ANNOTATION_STEPS]
    steps[0] = dict(type='mmdet.InferencerLoader')
    return Compose(steps)


def load_resized(pipeline: Callable[[dict], dict], image: Union[str, np.ndarray], name: str = '') -> ResizedImage:
    """Run ``pipeline`` (:func:`build_test_pipeline`) on an image file or a BGR uint8 array (H, W, 3)."""
    data = pipeline(dict(img=image) if isinstance(image, np.ndarray) else dict(img_path=image))
    meta = data['data_samples'].metainfo
    scale = meta.get('scale_factor', (1.0, 1.0))
    return ResizedImage(name=name or (image if isinstance(image, str) else 'array'), pixels=data['inputs'],
                        scale_factor=(float(scale[0]), float(scale[1])), ori_shape=tuple(meta['ori_shape']))


def default_shape(pipeline: Callable[[dict], dict]) -> Tuple[int, int]:
    """The resized ``(H, W)`` of a :data:`DEFAULT_SOURCE_SIZE` image: the export shape when none is given."""
    return load_resized(pipeline, np.zeros((*DEFAULT_SOURCE_SIZE, 3), np.uint8)).shape


def synthetic_images(shapes: Sequence[Tuple[int, int]], seed: int = 0) -> List[ResizedImage]:
    """Random already-resized images of the given ``(H, W)`` sizes (coloured rectangles on noise), each with a scale
    factor of 0.8 (as if resized from 1.25x larger originals), deterministic for a ``seed``."""
    generator = np.random.default_rng(seed)
    images = []
    for index, (height, width) in enumerate(shapes):
        pixels = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for _ in range(3):
            y0, x0 = generator.integers(0, height // 2), generator.integers(0, width // 2)
            y1, x1 = y0 + generator.integers(height // 8, height // 2), x0 + generator.integers(width // 8, width // 2)
            pixels[y0:y1, x0:x1] = generator.integers(0, 256, 3, dtype=np.uint8)
        scale = (0.8, 0.8)
        images.append(ResizedImage(name=f'synthetic-{index} {height}x{width}',
                                   pixels=torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), scale_factor=scale,
                                   ori_shape=(round(height / scale[1]), round(width / scale[0]))))
    return images


def pytorch_predict(model: nn.Module, image: ResizedImage) -> InstanceData:
    """The detector's own ``test_step`` (data preprocessor, then ``predict`` with ``rescale=True``) on one image:
    the reference the exported graph must reproduce."""
    sample = DetDataSample(metainfo=dict(img_shape=image.shape, ori_shape=image.ori_shape,
                                         scale_factor=image.scale_factor))
    with torch.no_grad():
        return model.test_step(dict(inputs=[image.pixels], data_samples=[sample]))[0].pred_instances
