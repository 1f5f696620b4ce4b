"""Inference speed and memory of a detector in PyTorch and as an exported ONNX model (onnxruntime): the timing,
the memory and the table. The models and images are built by :mod:`brs_detr.deployment.benchmark`
(``tools/analysis_tools/benchmark.py``).

What is timed, for both backends the same: one image already resized by the config's test pipeline (loading and
resizing are outside, as they are the same for both) to the final boxes, scores and labels: normalization, padding,
network and post-processing (NMS or top-k). PyTorch runs the model's ``test_step``; onnxruntime the exported graph.
Batch 1. Warm-up calls are excluded; ``repeat_num`` rounds of ``max_iter`` timed calls each (mmdet's
``tools/analysis_tools/benchmark.py`` names), cycling over the images.

Memory: CUDA: ``torch.cuda.max_memory_allocated`` during the timed calls (PyTorch only: onnxruntime's CUDA arena
is outside torch); CPU: the process's peak resident set size during the timed calls (``/proc/self/clear_refs`` +
``VmHWM``, :class:`~brs_detr.benchmarks.memory.PeakMemoryMeter`), as an absolute value (everything the process
holds, both models included) and as the extra over the value before the calls (activations and workspaces).
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass, field
from typing import Callable, List, Sequence, Tuple

import numpy as np
import torch

from .memory import MIB, PeakMemoryMeter

#: Size (H, W) of the synthetic images before the test pipeline resizes them (a 4:3 camera frame; the published
#: COCO test scale 1333x800 makes 800x1067 of it).
DEFAULT_IMAGE_SIZE = (480, 640)
PERCENTILE = 90


@dataclass
class InferenceResult:
    """Timings and memory of one backend."""
    backend: str
    device: str
    shape: Tuple[int, int]
    latencies: List[float] = field(default_factory=list)  # seconds, every timed call
    round_rates: List[float] = field(default_factory=list)  # images/s of each round
    peak_memory: int = 0
    baseline_memory: int = 0
    memory_kind: str = ''

    @property
    def images_per_second(self) -> float:
        return len(self.latencies) / sum(self.latencies)

    @property
    def median_ms(self) -> float:
        return 1e3 * float(np.median(self.latencies))

    @property
    def p90_ms(self) -> float:
        return 1e3 * float(np.percentile(self.latencies, PERCENTILE))


def synthetic_originals(num_images: int, size: Sequence[int], seed: int = 0) -> List[np.ndarray]:
    """``num_images`` random BGR uint8 images (H, W, 3) of ``size``: noise with a few flat rectangles."""
    generator = np.random.default_rng(seed)
    height, width = size
    images = []
    for _ in range(num_images):
        image = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
        for _ in range(4):
            y0, x0 = generator.integers(0, height // 2), generator.integers(0, width // 2)
            image[y0:y0 + height // 4, x0:x0 + width // 4] = generator.integers(0, 256, 3, dtype=np.uint8)
        images.append(image)
    return images


def _synchronize(device: str) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def time_calls(call: Callable[[int], object], num_images: int, device: str, memory_device: str, result: InferenceResult,
               repeat_num: int, max_iter: int, num_warmup: int) -> InferenceResult:
    """Run ``call(image_index)`` ``num_warmup`` times, then ``repeat_num`` rounds of ``max_iter`` timed calls, and
    fill ``result`` (latencies, images/s per round, peak memory of the timed calls)."""
    for index in range(num_warmup):
        call(index % num_images)
    _synchronize(device)
    meter = PeakMemoryMeter(torch.device(memory_device))
    meter.reset()
    for _ in range(repeat_num):
        round_latencies = []
        for index in range(max_iter):
            start = time.perf_counter()
            call(index % num_images)
            _synchronize(device)
            round_latencies.append(time.perf_counter() - start)
        result.latencies.extend(round_latencies)
        result.round_rates.append(len(round_latencies) / sum(round_latencies))
    result.peak_memory, result.baseline_memory = meter.read()
    memory_type = torch.device(memory_device).type
    result.memory_kind = ('CUDA allocated' if memory_type == 'cuda' else
                          'peak RSS' if meter.resettable else 'lifetime peak RSS')
    return result


def describe_run(config: str, results: Sequence[InferenceResult], repeat_num: int, max_iter: int, num_warmup: int,
                 image_size: Sequence[int]) -> str:
    """The line above the table: what ran, on what (versions, threads, CPU)."""
    versions = [f'torch {torch.__version__}']
    try:
        import onnxruntime
        versions.append(f'onnxruntime {onnxruntime.__version__}')
    except ImportError:
        pass
    shape = results[0].shape if results else ('?', '?')
    return (f'{os.path.basename(config)}: {repeat_num} x {max_iter} timed calls after {num_warmup} warm-up, batch 1, '
            f'{image_size[0]}x{image_size[1]} synthetic images resized to {shape[0]}x{shape[1]} by the test pipeline; '
            f'{", ".join(versions)}, {torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()}'
            f' ({os.cpu_count()} CPUs)')


def format_table(config: str, results: Sequence[InferenceResult]) -> str:
    """A Markdown table: one row per backend."""
    lines = ['| config | backend | device | input HxW | images/s | latency median ms | latency p90 ms | '
             'images/s per round | peak memory MiB (+ during inference) |', '|---|---|---|---|---:|---:|---:|---|---:|']
    for result in results:
        rounds = ', '.join(f'{rate:.3g}' for rate in result.round_rates)
        extra = result.peak_memory - result.baseline_memory
        lines.append(f'| {os.path.basename(config)} | {result.backend} | {result.device} | '
                     f'{result.shape[0]}x{result.shape[1]} | {result.images_per_second:.3g} | {result.median_ms:.1f} | '
                     f'{result.p90_ms:.1f} | {rounds} | {result.peak_memory / MIB:.0f} (+{extra / MIB:.0f}, '
                     f'{result.memory_kind}) |')
    return '\n'.join(lines)
