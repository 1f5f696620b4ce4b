"""docs/custom_dataset.md end to end: the commands of its toy walkthrough, as written there, and what they produce.

The commands are read from the guide's section "Try the whole path on toy data" and run in a fresh folder (with
``configs``, ``tools`` and ``demo`` linked in), one after the other: toy data in YOLO (5 classes) and VOC (3 other
classes) format, both converters, training on the YOLO set, fine-tuning on the VOC set (3 classes, ``load_from`` the
5-class checkpoint), ``tools/test.py --classwise --confusion-matrix --out``, the threshold choice and the demo. The
training, testing and demo tools run as a user runs them (a subprocess); the light ones (data generation, the
converters, the threshold choice from the results file) run in this process to keep the test CI-sized. Then:

* the converters' COCO files have the generated boxes and their summaries the objects per class;
* the fine-tuning log lists exactly the 12 class layers of the tiny BRS-DETR that were not loaded (5 -> 3 classes);
* ``classwise_ap.json`` has the 3 classes, the confusion matrix's rows hold every validation object once;
* the thresholds file sits next to the checkpoint, and the demo draws with it: every box above its class's threshold
  in its class colour where the JSON puts it, nothing below (``tests/drawn_pixels.py``).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Dict, List

import pytest
from mmengine.config import Config

from conftest import REPO_ROOT, load_tool_module
from drawn_pixels import check_drawing, read_rgb
from test_tools_e2e import run_tool

GUIDE = REPO_ROOT / 'docs' / 'custom_dataset.md'
SECTION = '## Try the whole path on toy data'
#: Tools the walkthrough runs in this process (no torch/mmdet start-up of their own).
IN_PROCESS = ('tools/make_toy_coco.py', 'tools/dataset_converters/voc2coco.py',
              'tools/dataset_converters/yolo2coco.py', 'tools/analysis_tools/choose_score_threshold.py')
VOC_CONFIG = 'configs/custom/brs-detr_r18-tiny_1xb2-2e_toy-voc.py'
WORK_DIR = 'work_dirs/brs-detr_r18-tiny_1xb2-2e_toy-voc'
CHECKPOINT = f'{WORK_DIR}/epoch_2.pth'
CLASS_LAYERS = [f'bbox_head.cls_branches.{i}.{p}' for i in range(3) for p in ('weight', 'bias')] + [
    f'roi_head.0.bbox_head.fc_{layer}.{p}' for layer in ('cls', 'reg') for p in ('weight', 'bias')] + [
    f'aux_bbox_head.0.atss_cls.{p}' for p in ('weight', 'bias')]


def guide_commands(path: Path = GUIDE) -> List[List[str]]:
    """The commands of the walkthrough's code blocks (continuation lines joined, comments left out)."""
    text = path.read_text(encoding='utf-8')
    section = text[text.index(SECTION):]
    blocks = re.findall(r'```bash\n(.*?)```', section, flags=re.S)
    commands = []
    for block in blocks:
        joined = re.sub(r'\\\n\s*', ' ', block)
        commands += [shlex.split(line) for line in joined.splitlines() if line.strip() and not line.startswith('#')]
    return commands


def run_in_process(script: str, args: List[str], cwd: Path) -> str:
    """Run a light tool's ``main`` in this process, in ``cwd``; its printed output."""
    module = load_tool_module(script[len('tools/'):-len('.py')])
    output = io.StringIO()
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            status = module.main(args)
    finally:
        os.chdir(previous)
    assert not status, f'{script} {" ".join(args)} returned {status}:\n{output.getvalue()}'
    return output.getvalue()


@pytest.fixture(scope='module')
def walkthrough(tmp_path_factory, tool_env) -> Dict:
    """Run the guide's commands in a fresh folder; the folder and each command's output (by script)."""
    base = tmp_path_factory.mktemp('custom_dataset_guide')
    for name in ('configs', 'tools', 'demo'):
        (base / name).symlink_to(REPO_ROOT / name)
    outputs: Dict[str, List[str]] = {}
    for argv in guide_commands():
        assert argv[0] == 'python', argv
        script, args = argv[1], argv[2:]
        if script in IN_PROCESS:
            output = run_in_process(script, args, base)
        else:
            output = run_tool([sys.executable, script, *args], base, tool_env)
        outputs.setdefault(script, []).append(output)
    return dict(base=base, outputs=outputs)


def test_the_guide_has_the_whole_path():
    scripts = [command[1] for command in guide_commands()]
    assert scripts == ['tools/make_toy_coco.py'] * 2 + ['tools/dataset_converters/yolo2coco.py',
                                                        'tools/dataset_converters/voc2coco.py'] + \
        ['tools/train.py'] * 2 + ['tools/test.py', 'tools/analysis_tools/choose_score_threshold.py',
                                  'demo/image_demo.py']


@pytest.mark.slow
def test_conversions_keep_the_generated_objects(walkthrough):
    base = walkthrough['base']
    yolo_summary, voc_summary = (walkthrough['outputs'][f'tools/dataset_converters/{name}.py'][0]
                                 for name in ('yolo2coco', 'voc2coco'))
    for summary, files, num_classes in ((yolo_summary, ['data/toy_yolo/annotations/train.json',
                                                        'data/toy_yolo/annotations/val.json'], 5),
                                        (voc_summary, ['data/toy_voc/annotations/voc07_train.json',
                                                       'data/toy_voc/annotations/voc07_val.json'], 3)):
        for file in files:
            coco = json.loads((base / file).read_text())
            assert len(coco['categories']) == num_classes
            counts = ', '.join(
                f'{category["name"]} {sum(ann["category_id"] == category["id"] for ann in coco["annotations"])}'
                for category in coco['categories'])
            assert f'{file}: {len(coco["images"])} images, {len(coco["annotations"])} objects ({counts})' in summary


@pytest.mark.slow
def test_fine_tuning_keeps_exactly_the_class_layers(walkthrough):
    pretrain, fine_tune = walkthrough['outputs']['tools/train.py']
    expected = ('load_from work_dirs/brs-detr_r18-tiny_1xb2-2e_toy-yolo/epoch_2.pth: the checkpoint has 5 classes (its '
                "meta), the model 3: 12 class-dependent weights are not loaded and keep the model's initialisation: ")
    line = next(line for line in fine_tune.splitlines() if expected in line)
    listed = line.split(expected)[1].split('. Every other weight was loaded.')[0].split('; ')
    assert sorted(entry.split(' ')[0] for entry in listed) == sorted(CLASS_LAYERS)
    assert 'bbox_head.cls_branches.0.weight (5, 64) -> (3, 64)' in listed
    assert 'roi_head.0.bbox_head.fc_reg.weight (20, 128) -> (12, 128)' in listed
    assert 'objects per class: red_box ' in fine_tune  # the data check's counts
    for name in ('red_box', 'green_disc', 'blue_wedge'):  # classwise validation at the end of training
        assert f'coco/{name}_precision:' in fine_tune


@pytest.mark.slow
def test_evaluation_writes_per_class_ap_and_the_confusion_matrix(walkthrough):
    base = walkthrough['base']
    output = walkthrough['outputs']['tools/test.py'][0]
    classwise = re.search(r'per-class AP written to (\S+)', output).group(1)
    ap = json.loads(Path(classwise).read_text())
    assert ap['metric'] == 'bbox' and list(ap['ap']) == ['red_box', 'green_disc', 'blue_wedge']
    assert all(value != value or 0 <= value <= 1 for value in ap['ap'].values())  # nan: no object of the class
    run_dir = Path(classwise).parent
    matrix = json.loads((run_dir / 'confusion_matrix.json').read_text())
    assert matrix['names'] == ['red_box', 'green_disc', 'blue_wedge', 'background']
    val = json.loads((base / 'data/toy_voc/annotations/voc07_val.json').read_text())
    objects = [sum(ann['category_id'] == index + 1 and not ann['iscrowd'] for ann in val['annotations'])
               for index in range(3)]
    assert [sum(row) for row in matrix['matrix'][:3]] == objects  # every object once: found, confused or missed
    assert matrix['score_thr'] == 'score threshold 0.3 (default; no epoch_2.pth.score_thr.json)'
    assert (run_dir / 'confusion_matrix.png').stat().st_size > 1000 and (run_dir / 'confusion_matrix.csv').is_file()
    assert (base / WORK_DIR / 'val_results.pkl').is_file()


@pytest.mark.slow
def test_thresholds_are_written_next_to_the_checkpoint(walkthrough):
    base = walkthrough['base']
    output = walkthrough['outputs']['tools/analysis_tools/choose_score_threshold.py'][0]
    assert 'score thresholds (f1 at IoU 0.5, 4 images; ' in output
    assert f'wrote {CHECKPOINT}.score_thr.json: demo/image_demo.py and BRSDetInferencer draw with these' in output
    stored = json.loads((base / f'{CHECKPOINT}.score_thr.json').read_text())
    assert list(stored['score_thr']) == ['red_box', 'green_disc', 'blue_wedge']
    assert stored['results'] == f'{WORK_DIR}/val_results.pkl' and stored['global_threshold']['true_positives'] >= 1


@pytest.mark.slow
def test_demo_draws_with_the_chosen_thresholds(walkthrough):
    base = walkthrough['base']
    thresholds = json.loads((base / f'{CHECKPOINT}.score_thr.json').read_text())['score_thr']
    output = walkthrough['outputs']['demo/image_demo.py'][0]
    described = ', '.join(f'{name} {value:.3f}' for name, value in thresholds.items())
    assert f'drawing with score thresholds per class from epoch_2.pth.score_thr.json: {described}' in output
    metainfo = Config.fromfile(str(base / VOC_CONFIG)).metainfo
    classes, palette = metainfo['classes'], metainfo['palette']
    images = sorted((base / 'data/toy_voc/VOC2007/JPEGImages').glob('*.jpg'))
    shown = hidden = 0
    for image in images:
        preds = json.loads((base / 'outputs/toy_voc/preds' / f'{image.stem}.json').read_text())
        above = [i for i, (score, label) in enumerate(zip(preds['scores'], preds['labels']))
                 if score > thresholds[classes[label]]]
        below = [i for i in range(len(preds['scores'])) if i not in above]
        check_drawing(read_rgb(base / 'outputs/toy_voc/vis' / f'{image.stem}.png'), read_rgb(image),
                      [preds['bboxes'][i] for i in above], [preds['labels'][i] for i in above], palette, classes,
                      scores=[preds['scores'][i] for i in above], hidden_boxes=[preds['bboxes'][i] for i in below])
        shown, hidden = shown + len(above), hidden + len(below)
    assert shown >= 1 and hidden >= 1, (shown, hidden)  # the thresholds decide what is drawn


@pytest.mark.slow
def test_an_explicit_threshold_wins_over_the_file(walkthrough):
    from brs_detr.apis import BRSDetInferencer
    base = walkthrough['base']
    inferencer = BRSDetInferencer(str(base / VOC_CONFIG), weights=str(base / CHECKPOINT), device='cpu',
                                  show_progress=False)
    assert inferencer.score_threshold().source == 'epoch_2.pth.score_thr.json'
    explicit = inferencer.score_threshold(0.5)
    assert (explicit.value, explicit.per_class, explicit.source) == (0.5, {}, '--score-thr 0.5')
