"""Test-time augmentation: tools/test.py --tta (mmdet's DetTTAModel for the CNN baselines, WBFDetTTAModel for the
DETRs) end to end on the toy set, the weighted box fusion against a brute-force reference, and the clear error of a
config without tta_model / tta_pipeline."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import torch
from mmengine.config import Config
from mmengine.structures import InstanceData

from conftest import CONFIGS_DIR, TOOLS_DIR, python_warnings

BRS_DETR_CONFIG = CONFIGS_DIR / 'brs_detr' / 'brs-detr_r18-tiny_1xb2-1e_toy-coco.py'
ATSS_CONFIG = CONFIGS_DIR / 'toy' / 'atss_r18-tiny_2xb2-12e_toy-coco.py'
MASK_RCNN_CONFIG = CONFIGS_DIR / 'toy' / 'brs-mask-rcnn_r18-tiny_2xb2-12e_toy-coco.py'
MAP_PATTERN = re.compile(r'coco/bbox_mAP: (-?\d+\.\d+)')


def random_checkpoint(config: Path, path: Path) -> Path:
    from brs_detr.deployment.detector import load_detector
    torch.manual_seed(0)
    torch.save({'state_dict': load_detector(Config.fromfile(str(config)), None).state_dict()}, path)
    return path


def check_tta_results(results_file: Path, num_images: int) -> None:
    import pickle
    with open(results_file, 'rb') as file:
        results = pickle.load(file)
    assert len(results) == num_images
    # the merged predictions are in the original image's pixels (128x128 toy images)
    boxes = torch.cat([torch.as_tensor(result['pred_instances']['bboxes']) for result in results])
    assert len(boxes) > 0 and boxes.min() >= 0 and boxes.max() <= 128 + 1e-3


@pytest.mark.slow
def test_tools_test_tta_on_the_tiny_atss(toy_coco_root, tmp_path):
    """tools/test.py --tta as a user runs it: flip x 3 scales merged by NMS (mmdet's DetTTAModel)."""
    assert Config.fromfile(str(ATSS_CONFIG)).tta_model.type == 'DetTTAModel'
    checkpoint = random_checkpoint(ATSS_CONFIG, tmp_path / 'atss.pth')
    done = subprocess.run([sys.executable, str(TOOLS_DIR / 'test.py'), str(ATSS_CONFIG), str(checkpoint), '--tta',
                           '--work-dir', str(tmp_path / 'work'), '--out', str(tmp_path / 'atss.pkl')],
                          cwd=toy_coco_root.parents[1], capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert MAP_PATTERN.search(done.stdout + done.stderr)
    assert python_warnings(done.stdout + done.stderr) == [], done.stderr[-3000:]
    check_tta_results(tmp_path / 'atss.pkl', len(list((toy_coco_root / 'val').iterdir())))


def test_tools_test_tta_on_the_tiny_brs_detr(toy_coco_root, tmp_path, monkeypatch, capsys):
    """tools/test.py --tta through the tool's main in this process (the subprocess run is the slow ATSS test):
    flip merged by weighted box fusion (WBFDetTTAModel)."""
    from conftest import load_tool_module
    assert Config.fromfile(str(BRS_DETR_CONFIG)).tta_model.type == 'WBFDetTTAModel'
    checkpoint = random_checkpoint(BRS_DETR_CONFIG, tmp_path / 'brs_detr.pth')
    monkeypatch.chdir(toy_coco_root.parents[1])
    load_tool_module('test').main([str(BRS_DETR_CONFIG), str(checkpoint), '--tta', '--work-dir', str(tmp_path / 'w'),
                                   '--out', str(tmp_path / 'brs_detr.pkl')])
    check_tta_results(tmp_path / 'brs_detr.pkl', len(list((toy_coco_root / 'val').iterdir())))


def test_tta_needs_tta_model_and_pipeline(toy_coco_root, tmp_path):
    from brs_detr.apis.cli import ToolInputError
    from brs_detr.apis.test import enable_tta
    cfg = Config.fromfile(str(MASK_RCNN_CONFIG))
    with pytest.raises(ToolInputError, match='--tta needs tta_model and tta_pipeline in the config'):
        enable_tta(cfg)
    cfg = Config.fromfile(str(ATSS_CONFIG))
    enable_tta(cfg)
    assert cfg.model.type == 'DetTTAModel' and cfg.model.module.type == 'ATSS'
    assert cfg.test_dataloader.dataset.pipeline[1].type == 'TestTimeAug'


def brute_force_wbf(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, num_views: int,
                    iou_thr: float):
    """Greedy clustering one box at a time, in descending score order: a box joins the first (highest-scoring)
    cluster of its class whose first box it overlaps by IoU > iou_thr, else starts one."""
    from mmdet.structures.bbox import bbox_overlaps
    order = scores.argsort(descending=True)
    clusters: List[List[int]] = []
    for index in order.tolist():
        for cluster in clusters:
            head = cluster[0]
            if labels[head] == labels[index] and bbox_overlaps(boxes[head:head + 1], boxes[index:index + 1]) > iou_thr:
                cluster.append(index)
                break
        else:
            clusters.append([index])
    fused = []
    for cluster in clusters:
        weight = scores[cluster]
        box = (weight[:, None] * boxes[cluster]).sum(0) / weight.sum()
        score = weight.mean() * min(len(cluster), num_views) / num_views
        fused.append((float(score), box, int(labels[cluster[0]])))
    fused.sort(key=lambda item: -item[0])
    return (torch.stack([box for _, box, _ in fused]), torch.tensor([score for score, _, _ in fused],
                                                                    dtype=scores.dtype),
            torch.tensor([label for _, _, label in fused]))


def test_weighted_box_fusion_equals_greedy_clustering():
    from brs_detr.models.test_time_augs import weighted_box_fusion
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(12, 2, generator=generator, dtype=torch.float64) * 200
    sizes = torch.rand(12, 2, generator=generator, dtype=torch.float64) * 40 + 10
    base = torch.cat([centres - sizes / 2, centres + sizes / 2], 1)
    # 3 views of the same objects, jittered, plus some missing detections
    boxes = torch.cat([base + torch.randn(12, 4, generator=generator, dtype=torch.float64) * 2 for _ in range(3)])
    scores = torch.rand(36, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (12, ), generator=generator).repeat(3)
    keep = torch.rand(36, generator=generator) > 0.2
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    ours = weighted_box_fusion(boxes.float(), scores.float(), labels, num_views=3, iou_thr=0.55)
    expected = brute_force_wbf(boxes.float(), scores.float(), labels, num_views=3, iou_thr=0.55)
    assert torch.equal(ours[2], expected[2])
    torch.testing.assert_close(ours[0], expected[0])
    torch.testing.assert_close(ours[1], expected[1])
    assert len(ours[1]) < len(scores)  # the views were fused


def test_wbf_tta_model_fuses_a_flipped_view():
    from mmdet.structures import DetDataSample

    from brs_detr.models.test_time_augs import WBFDetTTAModel
    class Detector(torch.nn.Module):
        def test_step(self, data):  # BaseTTAModel requires one; the merge does not call it
            raise AssertionError('not called')

    model = WBFDetTTAModel(module=Detector(), tta_cfg=dict(iou_thr=0.55, max_per_img=10))
    samples = []
    for flip, box in ((False, [10., 20., 50., 60.]), (True, [100 - 52., 22., 100 - 12., 62.])):
        sample = DetDataSample(metainfo=dict(ori_shape=(80, 100), flip=flip, flip_direction='horizontal'))
        sample.pred_instances = InstanceData(bboxes=torch.tensor([box]), scores=torch.tensor([0.8 if flip else 0.4]),
                                             labels=torch.tensor([1]))
        samples.append(sample)
    merged = model._merge_single_sample(samples).pred_instances
    # recovered flipped box [12, 22, 52, 62]; score-weighted mean with weights 0.4 and 0.8
    torch.testing.assert_close(merged.bboxes, torch.tensor([[(10 * .4 + 12 * .8) / 1.2, (20 * .4 + 22 * .8) / 1.2,
                                                              (50 * .4 + 52 * .8) / 1.2, (60 * .4 + 62 * .8) / 1.2]]))
    torch.testing.assert_close(merged.scores, torch.tensor([0.6]))
