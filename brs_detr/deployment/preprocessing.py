"""The data preprocessor of a detector as part of the exported graph (channel order, normalization, padding)."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmdet.models.data_preprocessors import DetDataPreprocessor

from .errors import UnsupportedExportError

#: Input channel order of the exported models (what OpenCV and mmdet's LoadImageFromFile give).
INPUT_CHANNELS = 'BGR'


class InGraphPreprocessor(nn.Module):
    """mmdet's :class:`DetDataPreprocessor` for one resized image, in traceable tensor operations.

    Same steps as mmengine's ``ImgDataPreprocessor`` at test time: channel swap (``bgr_to_rgb``), ``(x - mean) / std``,
    then bottom/right padding with ``pad_value`` up to a multiple of ``pad_size_divisor``. The padding is computed
    from the traced input size, so a graph exported with dynamic axes pads every input correctly.

    Args:
        data_preprocessor (DetDataPreprocessor): The detector's preprocessor (mean, std, channel swap, padding).

    Raises:
        UnsupportedExportError: Another preprocessor type, or batch augmentations.
    """

    def __init__(self, data_preprocessor: nn.Module) -> None:
        super().__init__()
        if type(data_preprocessor) is not DetDataPreprocessor:
            raise UnsupportedExportError(f'data preprocessor {type(data_preprocessor).__name__}: only mmdet\'s '
                                         f'DetDataPreprocessor is exported')
        self.swap_channels = bool(data_preprocessor._channel_conversion)
        self.normalize = bool(data_preprocessor._enable_normalize)
        if self.normalize:
            self.register_buffer('mean', data_preprocessor.mean.detach().clone(), persistent=False)
            self.register_buffer('std', data_preprocessor.std.detach().clone(), persistent=False)
        self.pad_size_divisor = int(data_preprocessor.pad_size_divisor)
        self.pad_value = float(data_preprocessor.pad_value)

    def forward(self, image: Tensor) -> Tuple[Tensor, Tensor]:
        """Normalize and pad one image.

        Args:
            image (Tensor): (1, 3, H, W) float, BGR pixel values (0-255) of the resized image.

        Returns:
            tuple[Tensor, Tensor]: The padded network input (1, 3, H', W') and the image size (2,) long ``(H, W)``.
        """
        image_size = torch._shape_as_tensor(image)[2:]
        if self.swap_channels:
            image = image[:, [2, 1, 0]]
        if self.normalize:
            image = (image - self.mean) / self.std
        height, width = image.shape[-2:]
        divisor = self.pad_size_divisor
        image = F.pad(image, (0, (divisor - width % divisor) % divisor, 0, (divisor - height % divisor) % divisor),
                      value=self.pad_value)
        return image, image_size
