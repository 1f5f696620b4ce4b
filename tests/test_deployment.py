"""ONNX export (brs_detr.deployment, tools/deployment/pytorch2onnx.py), the onnxruntime demo and the inference
benchmark, on the tiny configs with random weights.

* The tensor multi-scale deformable attention equals mmcv's op (float64, several level shapes) and a brute-force
  bilinear reference written from the definition, and mmcv's module gives the same output with it swapped in.
* Export + onnxruntime parity: tiny BRS-DETR on a padded input (the padding mask must survive the export), tiny
  ATSS (NMS inside the graph); a dynamic-shape BRS-DETR graph at two input sizes (two-stage detectors:
  tests/test_two_stage_deployment.py); the R50 configs, two-stage ones included (slow).
* The tools as a user runs them (subprocess): pytorch2onnx (exit 0, checker, table), demo --onnx (the same
  detections and picture as the PyTorch demo), benchmark (a row per backend); the clear errors.
"""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from typing import List

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config

from conftest import CONFIGS_DIR, REPO_ROOT, TOOLS_DIR, python_warnings

pytest.importorskip('onnx')
pytest.importorskip('onnxruntime')

BRS_DETR_CONFIG = CONFIGS_DIR / 'brs_detr' / 'brs-detr_r18-tiny_1xb2-1e_toy-coco.py'
ATSS_CONFIG = CONFIGS_DIR / 'toy' / 'atss_r18-tiny_2xb2-12e_toy-coco.py'
MASK_RCNN_CONFIG = CONFIGS_DIR / 'toy' / 'brs-mask-rcnn_r18-tiny_2xb2-12e_toy-coco.py'
EXPORT_TOOL = TOOLS_DIR / 'deployment' / 'pytorch2onnx.py'
BENCHMARK_TOOL = TOOLS_DIR / 'analysis_tools' / 'benchmark.py'
DEMO = REPO_ROOT / 'demo' / 'image_demo.py'
#: A size that the tiny configs' pad_size_divisor (32) pads: 90 -> 96, 120 -> 128.
PADDED_SHAPE = (90, 120)
#: A setting ONNX computes differently from mmcv (RoiAlign max pooling): the export refuses it, naming the module.
MAX_POOLED_ROI_ALIGN = '+model.roi_head.bbox_roi_extractor.roi_layer.pool_mode=max'
TIMEOUT_S = 300


def run(args: List, cwd: Path, expect_rc: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT_S, env={**__import__('os').environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == expect_rc, f'exit {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}'
    assert python_warnings(done.stdout + done.stderr) == [], f'{args[0]} printed warnings:\n{done.stderr[-3000:]}'
    return done


def random_detector(config: Path, seed: int = 0):
    from brs_detr.deployment.detector import load_detector
    torch.manual_seed(seed)
    return load_detector(Config.fromfile(str(config)), None)


def test_random_weights_have_no_uninitialized_parameters():
    """mmdet's DETRs create ``level_embed`` from uninitialized memory and fill it only in ``init_weights``, which
    random weights skip: load_detector draws it, so that the same seed gives the same (finite) model."""
    embeds = []
    for _ in range(2):
        torch.manual_seed(0)
        embeds.append(random_detector(BRS_DETR_CONFIG).level_embed.detach())
    assert torch.isfinite(embeds[0]).all() and 0.8 < float(embeds[0].std()) < 1.2
    assert torch.equal(embeds[0], embeds[1])


# ---------------------------------------------------------------------------------------------- deformable attention
def bilinear_reference(value: torch.Tensor, shapes: List[tuple], locations: torch.Tensor,
                       weights: torch.Tensor) -> torch.Tensor:
    """Deformable attention from its definition, one sample at a time: bilinear interpolation of the level map at
    pixel coordinates ``loc * size - 0.5`` (pixel centres at integers), zero outside, weighted sum per head."""
    bs, _, heads, dims = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = torch.zeros(bs, queries, heads, dims, dtype=value.dtype)
    starts = np.cumsum([0] + [h * w for h, w in shapes])
    for b in range(bs):
        for q in range(queries):
            for m in range(heads):
                for level, (height, width) in enumerate(shapes):
                    grid = value[b, starts[level]:starts[level + 1], m].reshape(height, width, dims)
                    for p in range(points):
                        x = float(locations[b, q, m, level, p, 0]) * width - 0.5
                        y = float(locations[b, q, m, level, p, 1]) * height - 0.5
                        x0, y0 = int(np.floor(x)), int(np.floor(y))
                        sample = torch.zeros(dims, dtype=value.dtype)
                        for yy, xx in ((y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1)):
                            if 0 <= yy < height and 0 <= xx < width:
                                sample += (1 - abs(x - xx)) * (1 - abs(y - yy)) * grid[yy, xx]
                        out[b, q, m] += weights[b, q, m, level, p] * sample
    return out.reshape(bs, queries, heads * dims)


@pytest.mark.parametrize('shapes', [[(6, 9), (3, 5), (2, 3)], [(13, 7), (7, 4), (4, 2), (2, 1)]])
def test_tensor_msda_equals_mmcv_and_the_definition(shapes):
    from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch

    from brs_detr.deployment.msda import multi_scale_deformable_attn_tensor
    generator = torch.Generator().manual_seed(len(shapes))
    num_keys = sum(h * w for h, w in shapes)
    value = torch.randn(2, num_keys, 2, 3, dtype=torch.float64, generator=generator)
    # locations also outside [0, 1] (zero padding)
    locations = torch.rand(2, 5, 2, len(shapes), 3, 2, dtype=torch.float64, generator=generator) * 1.4 - 0.2
    weights = torch.rand(2, 5, 2, len(shapes), 3, dtype=torch.float64, generator=generator)
    spatial_shapes = torch.tensor(shapes)
    ours = multi_scale_deformable_attn_tensor(value, spatial_shapes, locations, weights)
    torch.testing.assert_close(ours, multi_scale_deformable_attn_pytorch(value, spatial_shapes, locations, weights),
                               rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours, bilinear_reference(value, shapes, locations, weights), rtol=1e-10, atol=1e-10)


def test_mmcv_module_is_unchanged_with_tensor_msda():
    from mmcv.ops import MultiScaleDeformableAttention

    from brs_detr.deployment.msda import tensor_msda
    torch.manual_seed(0)
    module = MultiScaleDeformableAttention(embed_dims=32, num_heads=4, num_levels=3, num_points=2,
                                           batch_first=True).eval()
    shapes = torch.tensor([[8, 10], [4, 5], [2, 3]])
    starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
    query, value = torch.randn(2, 7, 32), torch.randn(2, int(shapes.prod(1).sum()), 32)
    reference_points = torch.rand(2, 7, 3, 2)
    kwargs = dict(value=value, reference_points=reference_points, spatial_shapes=shapes, level_start_index=starts)
    with torch.no_grad():
        expected = module(query, **kwargs)
        with tensor_msda():
            swapped = module(query, **kwargs)
    torch.testing.assert_close(swapped, expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------- export + parity
def export_and_compare(config: Path, tmp_path: Path, export_shape, check_shapes, dynamic: bool):
    from brs_detr.deployment import build_export_wrapper, export_onnx, synthetic_images
    from brs_detr.deployment.ort_runner import ONNXRuntimeDetector
    from brs_detr.deployment.parity import check_parity

    model = random_detector(config)
    example = synthetic_images([export_shape], seed=3)[0]
    path = tmp_path / f'{config.stem}.onnx'
    export_onnx(build_export_wrapper(model), example.graph_inputs(), str(path), dynamic_shape=dynamic)
    runner = ONNXRuntimeDetector(str(path), model.cfg)
    rows = check_parity(model, runner, synthetic_images(check_shapes, seed=4))
    assert all(row.ok for row in rows), rows
    assert all(row.compared == 10 for row in rows)
    return path


def test_brs_detr_export_matches_pytorch_on_a_padded_image(tmp_path):
    """90x120 is padded to 96x128: without the padding mask in the graph every box moves."""
    export_and_compare(BRS_DETR_CONFIG, tmp_path, PADDED_SHAPE, [PADDED_SHAPE, PADDED_SHAPE], dynamic=False)


def test_atss_export_matches_pytorch_with_nms_in_the_graph(tmp_path):
    import onnx
    path = export_and_compare(ATSS_CONFIG, tmp_path, (96, 128), [(96, 128), (96, 128)], dynamic=False)
    assert 'NonMaxSuppression' in {node.op_type for node in onnx.load(str(path)).graph.node}


def test_dynamic_shape_export_runs_at_other_sizes(tmp_path):
    from brs_detr.deployment.ort_runner import ONNXRuntimeDetector
    path = export_and_compare(BRS_DETR_CONFIG, tmp_path, (96, 128), [(96, 128), (64, 160)], dynamic=True)
    assert ONNXRuntimeDetector(str(path), Config.fromfile(str(BRS_DETR_CONFIG))).static_shape is None


def test_static_graph_refuses_another_size(tmp_path):
    from brs_detr.apis.cli import ToolInputError
    from brs_detr.deployment import build_export_wrapper, export_onnx, synthetic_images
    from brs_detr.deployment.ort_runner import ONNXRuntimeDetector
    model = random_detector(ATSS_CONFIG)
    path = tmp_path / 'static.onnx'
    export_onnx(build_export_wrapper(model), synthetic_images([(96, 128)])[0].graph_inputs(), str(path))
    with pytest.raises(ToolInputError, match='exported for 96x128 inputs only; export with --dynamic-shape'):
        ONNXRuntimeDetector(str(path), model.cfg).run(synthetic_images([(64, 128)])[0])


def test_an_operator_without_exporter_is_named(tmp_path):
    """mmcv's deformable convolution (compiled kernel) has no ONNX symbolic in mmcv 2."""
    from mmcv.ops import DeformConv2dPack

    from brs_detr.deployment import UnsupportedExportError, export_onnx

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = DeformConv2dPack(3, 4, 3, padding=1)

        def forward(self, image, scale_factor):
            out = self.conv(image)
            return out.flatten(1), out.mean().reshape(1), scale_factor

    with pytest.raises(UnsupportedExportError, match='DeformConv2d'):
        export_onnx(Wrapper().eval(), (torch.rand(1, 3, 8, 8), torch.ones(2)), str(tmp_path / 'x.onnx'))
    assert not list(tmp_path.iterdir())  # no partial file


def test_export_returns_the_tracer_warnings_and_passes_other_warnings_on(tmp_path):
    """The tracer's warnings (Python values fixed in the graph) are returned, not shown; any other warning raised
    while exporting goes through the warning filters as usual (the export does not swallow it)."""
    from brs_detr.deployment import export_onnx

    class Wrapper(torch.nn.Module):
        def forward(self, image, scale_factor):
            warnings.warn('a warning raised while tracing', UserWarning)
            boxes = image.flatten(1)[:, :4]
            if scale_factor.sum() > 0:  # a branch on a tensor: fixed at export time
                boxes = boxes * 2
            return boxes, boxes.sum(1), scale_factor

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        frozen = export_onnx(Wrapper().eval(), (torch.rand(1, 3, 8, 8), torch.ones(2)), str(tmp_path / 'x.onnx'))
    assert len(frozen) == 1 and 'Converting a tensor to a Python boolean' in frozen[0], frozen
    assert [str(w.message) for w in caught if w.category is UserWarning and 'while tracing' in str(w.message)] == \
        ['a warning raised while tracing']
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]


def test_missing_optional_module_is_named(monkeypatch):
    from brs_detr.deployment import MissingDependencyError, import_optional
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)
    with pytest.raises(MissingDependencyError, match="'onnxruntime' is not installed.*onnxruntime==1.32.0"):
        import_optional('onnxruntime')


# ---------------------------------------------------------------------------------------------- the tools
#: The class names of the exported checkpoint: other than the config's, as after fine-tuning with a class list that
#: was renamed later (the demo names detections by the checkpoint's names).
CHECKPOINT_CLASSES = ('square', 'circle', 'wedge')


@pytest.fixture(scope='module')
def exported_atss(tmp_path_factory, toy_coco_root):
    """tools/deployment/pytorch2onnx.py on the tiny ATSS (random weights) as a user runs it, with toy images."""
    base = tmp_path_factory.mktemp('export')
    checkpoint = base / 'atss.pth'
    torch.save({'state_dict': random_detector(ATSS_CONFIG).state_dict(),
                'meta': {'dataset_meta': {'classes': CHECKPOINT_CLASSES}}}, checkpoint)
    out = base / 'atss.onnx'
    done = run([EXPORT_TOOL, ATSS_CONFIG, checkpoint, '--out', out, '--images', toy_coco_root / 'val'],
               cwd=toy_coco_root.parents[1])
    return dict(base=base, checkpoint=checkpoint, onnx=out, stdout=done.stdout, data=toy_coco_root)


def test_export_tool_checks_and_compares(exported_atss):
    stdout = exported_atss['stdout']
    assert 'onnx.checker: OK' in stdout
    rows = [line for line in stdout.splitlines() if line.startswith('| 0000')]
    assert len(rows) == len(list((exported_atss['data'] / 'val').iterdir())) and all(' ok |' in r for r in rows)
    assert 'onnxruntime matches PyTorch' in stdout
    assert exported_atss['onnx'].is_file()


def test_exported_model_names_its_classes_as_the_checkpoint_does(exported_atss):
    """The export stores the checkpoint's class names in the ONNX file; demo --onnx drew the config's names, which
    the PyTorch demo (the checkpoint's names) does not."""
    from mmengine.config import Config

    from brs_detr.deployment.onnx_inferencer import ONNXDetInferencer
    from brs_detr.deployment.ort_runner import ONNXRuntimeDetector
    assert ONNXRuntimeDetector(str(exported_atss['onnx']), Config.fromfile(str(ATSS_CONFIG))).class_names == list(
        CHECKPOINT_CLASSES)
    inferencer = ONNXDetInferencer(str(ATSS_CONFIG), str(exported_atss['onnx']), show_progress=False)
    assert list(inferencer.model.dataset_meta['classes']) == list(CHECKPOINT_CLASSES)
    assert list(inferencer.visualizer.dataset_meta['classes']) == list(CHECKPOINT_CLASSES)


def test_export_tool_errors_are_one_line(tmp_path, capsys, monkeypatch):
    """In this process (the subprocess run of the same is slow-marked): exit status 2 and one line naming the
    problem, nothing written."""
    from brs_detr.apis.cli import run_tool_main
    from conftest import load_tool_module
    tool = load_tool_module('deployment/pytorch2onnx')
    checkpoint = tmp_path / 'mask.pth'
    torch.save({'state_dict': random_detector(MASK_RCNN_CONFIG).state_dict()}, checkpoint)
    image = tmp_path / 'image.png'
    cv2.imwrite(str(image), np.zeros((120, 160, 3), np.uint8))
    monkeypatch.setattr(sys, 'argv', ['pytorch2onnx.py'])
    cases = (([MASK_RCNN_CONFIG, checkpoint, '--out', tmp_path / 'm.onnx', '--cfg-options', MAX_POOLED_ROI_ALIGN],
              "MaskRCNN (two-stage): not exported: roi_head.bbox_roi_extractor: RoIAlign(pool_mode='max')"),
             ([ATSS_CONFIG, checkpoint, '--out', tmp_path / 'a.onnx'], 'do not fit the model of'),
             ([ATSS_CONFIG, checkpoint, '--out', tmp_path / 'a.onnx', '--opset', '13'], 'opset >= 16'),
             ([ATSS_CONFIG, checkpoint, '--out', tmp_path / 'a.onnx', '--shape', '64', '64', '--images', image],
              'image.png resizes to 96x128 with the test pipeline, not the export shape 64x64'),
             ([ATSS_CONFIG, tmp_path / 'missing.pth', '--out', tmp_path / 'a.onnx'], 'checkpoint file not found'))
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run_tool_main(lambda: tool.main([str(arg) for arg in argv]))
        error = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and error[-1].startswith('pytorch2onnx.py: error: ') and message in error[-1]
        assert not list(tmp_path.glob('*.onnx'))


@pytest.mark.slow
def test_export_tool_reports_an_unsupported_model_in_one_line(exported_atss, tmp_path):
    done = run([EXPORT_TOOL, MASK_RCNN_CONFIG, exported_atss['checkpoint'], '--out', tmp_path / 'm.onnx',
                '--cfg-options', MAX_POOLED_ROI_ALIGN], cwd=REPO_ROOT, expect_rc=2)
    assert done.stderr.strip().splitlines()[-1].startswith('pytorch2onnx.py: error: MaskRCNN (two-stage): not '
                                                           'exported: roi_head.bbox_roi_extractor: RoIAlign')
    assert 'Traceback' not in done.stderr and not (tmp_path / 'm.onnx').exists()


@pytest.mark.slow
def test_demo_onnx_draws_the_same_detections(exported_atss, tmp_path):
    """demo --onnx against the PyTorch demo's inferencer on the same images: same boxes, labels, picture."""
    from brs_detr.apis import BRSDetInferencer
    images = sorted((exported_atss['data'] / 'val').iterdir())[:2]
    run([DEMO, *images, ATSS_CONFIG, '--onnx', exported_atss['onnx'], '--out-dir', tmp_path / 'onnx',
         '--score-thr', '0.05'], cwd=REPO_ROOT)
    inferencer = BRSDetInferencer(str(ATSS_CONFIG), str(exported_atss['checkpoint']), device='cpu',
                                  show_progress=False)
    inferencer([str(image) for image in images], out_dir=str(tmp_path / 'torch'), pred_score_thr=0.05,
               no_save_pred=False)
    for image in images:
        onnx_pred = json.loads((tmp_path / 'onnx' / 'preds' / f'{image.stem}.json').read_text())
        torch_pred = json.loads((tmp_path / 'torch' / 'preds' / f'{image.stem}.json').read_text())
        assert onnx_pred['labels'] == torch_pred['labels'] and len(onnx_pred['labels']) > 0
        np.testing.assert_allclose(onnx_pred['bboxes'], torch_pred['bboxes'], rtol=1e-3, atol=1e-3)
        drawn = [cv2.imread(str(tmp_path / side / 'vis' / f'{image.stem}.png')) for side in ('onnx', 'torch')]
        assert (drawn[0] != drawn[1]).any(axis=2).mean() < 1e-3  # a 1e-5 px box shift may round one pixel


@pytest.mark.slow
def test_benchmark_tool_prints_both_backends(exported_atss):
    done = run([BENCHMARK_TOOL, ATSS_CONFIG, exported_atss['checkpoint'], '--onnx', exported_atss['onnx'],
                '--max-iter', '2', '--num-warmup', '1', '--img-size', '128', '128'], cwd=REPO_ROOT)
    rows = [line.split('|') for line in done.stdout.splitlines() if line.startswith(f'| {ATSS_CONFIG.name}')]
    assert [row[2].strip() for row in rows] == ['PyTorch', 'ONNX Runtime']
    for row in rows:
        assert row[4].strip() == '128x128' and float(row[5]) > 0 and float(row[6]) > 0 and float(row[7]) > 0
        assert 'MiB' not in row[9] and 'peak RSS' in row[9]


def test_benchmark_tool_arguments_are_checked(capsys):
    from conftest import load_tool_module
    benchmark = load_tool_module('analysis_tools/benchmark')
    for argv, message in ((['--skip-pytorch'], '--skip-pytorch needs --onnx'),
                          (['--max-iter', '0'], '--max-iter and --num-images must be at least 1'),
                          (['--task', 'dataloader'], "invalid choice: 'dataloader'")):
        with pytest.raises(SystemExit) as exit_info:
            benchmark.parse_args([str(ATSS_CONFIG), *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize('config', [
    CONFIGS_DIR / 'brs_detr' / 'brs-detr_r50_4xb4-12e_coco.py',
    # the same inference graph as BRS-DETR's (Co-Deformable-DETR's query head): long
    pytest.param(CONFIGS_DIR / 'co_deformable_detr' / 'co_deformable_detr_r50_8xb2-12e_coco.py',
                 marks=pytest.mark.long),
    CONFIGS_DIR / 'rank_based' / 'brs-atss_r50_fpn_4xb4-12e_coco.py',
    CONFIGS_DIR / 'rank_based' / 'brs-paa_r50_fpn_4xb4-12e_coco.py',
])
def test_r50_configs_export_and_match(config, tmp_path):
    """The published R50 models (random weights) export and agree with PyTorch; 320x480 inputs keep it short (the
    graph is the same at the COCO test size: docs/deployment.md has the 800x1067 runs of the tool).

    The R50 two-stage configs are left to the tool's runs in docs/deployment.md (Mask R-CNN alone took 69 s here,
    the largest share of the suite's time); tests/test_two_stage_deployment.py checks their graph on tiny models.
    """
    export_and_compare(config, tmp_path, (320, 480), [(320, 480)], dynamic=False)
