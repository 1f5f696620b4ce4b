"""What ``tools/analysis_tools/benchmark.py`` does: the PyTorch model of a config and its exported ONNX model
(onnxruntime) timed on the same images.

The models and images come from here (config, strict weights, test pipeline, onnxruntime runner); the timing, the
memory and the table from :mod:`brs_detr.benchmarks.inference`, which says what is measured.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from brs_detr.apis.launch import load_config
from brs_detr.benchmarks.inference import DEFAULT_IMAGE_SIZE, InferenceResult, synthetic_originals, time_calls
from .detector import load_detector
from .inputs import build_test_pipeline, load_resized, pytorch_predict


def benchmark_inference(config: str, checkpoint: Optional[str] = None, onnx_file: Optional[str] = None,
                        device: str = 'cpu', repeat_num: int = 1, max_iter: int = 20, num_warmup: int = 2,
                        image_size: Sequence[int] = DEFAULT_IMAGE_SIZE, num_images: int = 4,
                        cfg_options: Optional[dict] = None, skip_pytorch: bool = False) -> List[InferenceResult]:
    """Time the PyTorch model of ``config`` and, when given, the exported ``onnx_file``.

    Args:
        config (str): Config file.
        checkpoint (str, optional): Weights (None: random weights, fine for speed).
        onnx_file (str, optional): A model exported from this config by ``tools/deployment/pytorch2onnx.py``.
        device (str): ``cpu`` or ``cuda[:N]``, for both backends.
        repeat_num, max_iter, num_warmup (int): Rounds, timed calls per round, warm-up calls.
        image_size (sequence[int]): (H, W) of the synthetic images before the test pipeline resizes them.
        num_images (int): Distinct synthetic images, cycled.
        cfg_options (dict, optional): Config overrides (checked keys, see ``--cfg-options``).
        skip_pytorch (bool): Time only the ONNX model.

    Returns:
        list[InferenceResult]: PyTorch first, then ONNX Runtime.
    """
    cfg = load_config(config, cfg_options, 'none')
    pipeline = build_test_pipeline(cfg)
    images = [load_resized(pipeline, image, f'synthetic-{index}')
              for index, image in enumerate(synthetic_originals(num_images, image_size))]
    shape = images[0].shape
    results = []
    if not skip_pytorch:
        model = load_detector(cfg, checkpoint, device)
        on_device = [type(image)(image.name, image.pixels.to(device), image.scale_factor, image.ori_shape)
                     for image in images]
        with torch.no_grad():
            results.append(time_calls(lambda index: pytorch_predict(model, on_device[index]), num_images, device,
                                      device, InferenceResult('PyTorch', device, shape), repeat_num, max_iter,
                                      num_warmup))
        del model
    if onnx_file is not None:
        from .ort_runner import ONNXRuntimeDetector
        runner = ONNXRuntimeDetector(onnx_file, cfg, device=device)
        results.append(time_calls(lambda index: runner.run(images[index]), num_images, device, 'cpu',
                                  InferenceResult('ONNX Runtime', device, shape), repeat_num, max_iter, num_warmup))
    return results
