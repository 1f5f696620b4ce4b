"""demo/image_demo.py end to end: toy-trained checkpoints drawn on toy images, checked pixel by pixel.

A tiny ATSS (16 epochs of 16 iterations) and a tiny BRS-Mask R-CNN (8 iterations) are trained with tools/train.py on a
toy COCO set of 128x128 images; the demo runs, as a user runs it, on 256x256 toy images. The drawn PNG must show
exactly what the saved predictions say: the class colour on the edges of every box scored above the threshold
(tests/drawn_pixels.py), tinted masks for Mask R-CNN, and every other pixel unchanged (so boxes below the threshold
are not drawn). Bad input must fail with a message that names it.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional

import numpy as np
import pytest
import torch
from mmengine.config import Config

from conftest import CONFIGS_DIR, REPO_ROOT, TOOLS_DIR, brs_detr_warns
from drawn_pixels import check_drawing, masks_from_rles, read_rgb
from test_tools_e2e import run_tool

DEMO = REPO_ROOT / 'demo' / 'image_demo.py'
ATSS_CONFIG = CONFIGS_DIR / 'toy' / 'atss_r18-tiny_2xb2-12e_toy-coco.py'
MASK_CONFIG = CONFIGS_DIR / 'toy' / 'brs-mask-rcnn_r18-tiny_2xb2-12e_toy-coco.py'
TOY_META = Config.fromfile(CONFIGS_DIR / '_base_' / 'datasets' / 'toy_coco_detection.py').metainfo
CLASSES, PALETTE = TOY_META['classes'], TOY_META['palette']
NUM_TRAIN = 32  # 16 iterations of 2 images per epoch
ATSS_EPOCHS = 16
MASK_EPOCHS = 1
MASK_TRAIN_IMAGES = 16
TRAIN_SEED = 0  # the same checkpoints in every run
DEMO_IMAGE_SIZE = (256, 256)  # twice the training size: the boxes must come back in input pixels
NUM_DEMO_IMAGES = 4
DEFAULT_SCORE_THR = 0.3
THRESHOLD_MARGIN = 0.01


def train(config: Path, work_dir: Path, epochs: int, cwd: Path, env: Dict[str, str], *cfg_options: str) -> Path:
    """Train ``config`` for ``epochs`` epochs without validation; return the last checkpoint."""
    run_tool([sys.executable, TOOLS_DIR / 'train.py', config, '--work-dir', work_dir, '--cfg-options',
              f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={epochs + 1}',
              f'default_hooks.checkpoint.interval={epochs}', 'default_hooks.logger.interval=8',
              f'param_scheduler.1.milestones=[{max(epochs - 2, 1)}]', f'randomness.seed={TRAIN_SEED}', *cfg_options],
             cwd, env)
    checkpoint = work_dir / f'epoch_{epochs}.pth'
    assert checkpoint.is_file()
    return checkpoint


@pytest.fixture(scope='module')
def demo_env(tmp_path_factory, tool_env) -> Dict:
    """Toy data, demo images and the two trained checkpoints (shared by the tests of this module)."""
    from brs_detr.datasets.toy_coco import make_toy_coco

    base = tmp_path_factory.mktemp('image_demo')
    make_toy_coco(str(base / 'data' / 'toy_coco'), num_train=NUM_TRAIN, num_val=2, seed=0)
    # the demo images: another seed, twice the size; train/ and val/ both have a 000001.png
    demo_root = Path(make_toy_coco(str(base / 'demo_images'), num_train=1, num_val=NUM_DEMO_IMAGES,
                                   img_size=DEMO_IMAGE_SIZE, seed=1))
    atss = train(ATSS_CONFIG, base / 'work_dirs' / 'atss', ATSS_EPOCHS, base, tool_env)
    # 8 iterations: the masks need not be good, only drawn
    mask = train(MASK_CONFIG, base / 'work_dirs' / 'mask', MASK_EPOCHS, base, tool_env,
                 f'+train_dataloader.dataset.indices={MASK_TRAIN_IMAGES}')
    return dict(base=base, demo_root=demo_root, val_dir=demo_root / 'val', atss=atss, mask=mask, env=tool_env)


def run_demo(demo_env: Dict, args: List, expect_rc: Optional[int] = 0) -> str:
    return run_tool([sys.executable, DEMO, *args], demo_env['base'], demo_env['env'], expect_rc)


def load_preds(path: Path) -> Dict:
    preds = json.loads(path.read_text())
    assert set(preds) >= {'labels', 'scores', 'bboxes'}, preds.keys()
    assert len(preds['labels']) == len(preds['scores']) == len(preds['bboxes'])
    return preds


def check_image(vis_png: Path, image: Path, preds: Dict, score_thr: float, with_masks: bool = False) -> dict:
    """Assert that ``vis_png`` shows the predictions above ``score_thr`` on ``image`` and nothing else."""
    shown = [i for i, score in enumerate(preds['scores']) if score > score_thr]
    hidden = [preds['bboxes'][i] for i, score in enumerate(preds['scores']) if score <= score_thr]
    masks = masks_from_rles([preds['masks'][i] for i in shown]) if with_masks else None
    verified = check_drawing(read_rgb(vis_png), read_rgb(image), [preds['bboxes'][i] for i in shown],
                             [preds['labels'][i] for i in shown], PALETTE, CLASSES,
                             scores=[preds['scores'][i] for i in shown], masks=masks, hidden_boxes=hidden)
    verified['shown'] = len(shown)
    return verified


def total(results: List[dict], key: str) -> int:
    return sum(result[key] for result in results)


# ----------------------------------------------------------------------------- end to end (subprocess)
@pytest.fixture(scope='module')
def folder_run(demo_env) -> Dict:
    """The demo on a folder with the default threshold (0.3); returns its output and predictions."""
    out_dir = demo_env['base'] / 'out_folder'
    output = run_demo(demo_env, [demo_env['val_dir'], ATSS_CONFIG, '--weights', demo_env['atss'], '--out-dir',
                                 out_dir])
    images = sorted(demo_env['val_dir'].glob('*.png'))
    preds = {image.stem: load_preds(out_dir / 'preds' / f'{image.stem}.json') for image in images}
    return dict(out_dir=out_dir, output=output, images=images, preds=preds)


@pytest.mark.slow
def test_folder_input_draws_the_predicted_boxes(folder_run):
    """Each box scored above 0.3 has its class colour where the JSON puts it; nothing else changed."""
    out_dir, images = folder_run['out_dir'], folder_run['images']
    assert f'{NUM_DEMO_IMAGES} image(s): drawn images in {out_dir / "vis"}, predictions in {out_dir / "preds"}' \
        in folder_run['output']
    assert len(images) == NUM_DEMO_IMAGES
    assert sorted(p.name for p in (out_dir / 'vis').iterdir()) == [p.name for p in images]
    assert sorted(p.name for p in (out_dir / 'preds').iterdir()) == [p.stem + '.json' for p in images]
    results = []
    for image in images:
        preds = folder_run['preds'][image.stem]
        boxes = np.asarray(preds['bboxes'])
        assert boxes.size and boxes[:, 2:].max() > DEMO_IMAGE_SIZE[0] / 2  # input pixels, not the 128 px test scale
        results.append(check_image(out_dir / 'vis' / f'{image.stem}.png', image, preds, DEFAULT_SCORE_THR))
    assert total(results, 'shown') >= 1 and total(results, 'box_pixels') >= 10, results
    assert total(results, 'hidden_box_pixels') > 0, results


def pick_num_shown(scores: List[float], num_default: int) -> int:
    """How many of the (descending) ``scores`` a new threshold shows: one less than the default threshold shows (one
    more if it shows one), or the nearest count whose threshold, the midpoint to the next score, is clear of both
    scores (float noise between runs cannot move a box across it) and differs from the default's."""
    wanted = num_default - 1 if num_default >= 2 else num_default + 1
    candidates = [k for k in range(1, len(scores))
                  if k != num_default and scores[k - 1] - scores[k] > THRESHOLD_MARGIN]
    assert candidates, scores
    return min(candidates, key=lambda k: (abs(k - wanted), k))


@pytest.mark.slow
def test_glob_input_score_threshold_and_distinct_names(demo_env, folder_run):
    """A quoted recursive glob (train/000001.png and val/000001.png: distinct names), --score-thr, --batch-size."""
    scores = sorted((s for preds in folder_run['preds'].values() for s in preds['scores']), reverse=True)
    num_default = sum(s > DEFAULT_SCORE_THR for s in scores)
    num_shown = pick_num_shown(scores, num_default)
    score_thr = round((scores[num_shown - 1] + scores[num_shown]) / 2, 6)
    out_dir = demo_env['base'] / 'out_glob'
    run_demo(demo_env, [str(demo_env['demo_root'] / '**' / '*.png'), ATSS_CONFIG, '--weights', demo_env['atss'],
                        '--out-dir', out_dir, '--score-thr', str(score_thr), '--batch-size', '2'])
    images = sorted(demo_env['demo_root'].glob('**/*.png'))
    names = {image: f'{image.parent.name}_{image.stem}_png' if image.stem == '000001' else image.stem
             for image in images}
    assert sorted(p.name for p in (out_dir / 'vis').iterdir()) == sorted(f'{n}.png' for n in names.values())
    results = {}
    for image, name in names.items():
        preds = load_preds(out_dir / 'preds' / f'{name}.json')
        results[name] = check_image(out_dir / 'vis' / f'{name}.png', image, preds, score_thr)
    # the val images show exactly the boxes above the new threshold (one more or one less than at 0.3)
    assert sum(result['shown'] for name, result in results.items() if name != 'train_000001_png') == num_shown
    # the same model on the same image gives the same predictions, whatever the batch size
    np.testing.assert_allclose(load_preds(out_dir / 'preds' / '000002.json')['scores'],
                               folder_run['preds']['000002']['scores'], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_mask_rcnn_draws_masks(demo_env):
    """A BRS-Mask R-CNN checkpoint: the mask interiors are tinted with the class colour, RLE masks are saved."""
    out_dir = demo_env['base'] / 'out_mask'
    images = sorted(demo_env['val_dir'].glob('*.png'))[:2]
    run_demo(demo_env, [*images, MASK_CONFIG, '--weights', demo_env['mask'], '--out-dir', out_dir,
                        '--score-thr', '0.05', '--cfg-options', 'model.test_cfg.rcnn.max_per_img=2'])
    results = []
    for image in images:
        preds = load_preds(out_dir / 'preds' / f'{image.stem}.json')
        assert len(preds['scores']) <= 2  # --cfg-options reached the model
        assert all(rle['size'] == list(DEMO_IMAGE_SIZE) for rle in preds['masks'])
        results.append(check_image(out_dir / 'vis' / f'{image.stem}.png', image, preds, 0.05, with_masks=True))
    assert total(results, 'shown') >= 2 and total(results, 'mask_pixels') >= 200, results


@pytest.mark.slow
def test_user_error_exits_2_with_a_message(demo_env):
    """As a user sees it: exit status 2, one line naming the problem, no traceback."""
    pattern = str(demo_env['base'] / 'nothere' / '*.jpg')
    output = run_demo(demo_env, [pattern, ATSS_CONFIG, '--weights', demo_env['atss']], expect_rc=2)
    assert f"image_demo.py: error: no image matched the pattern '{pattern}'" in output
    assert 'Traceback' not in output


# ----------------------------------------------------------------------------- in process (fast failures)
def load_demo_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location('brs_detr_demo_image_demo', DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def demo_module() -> ModuleType:
    return load_demo_module()


@pytest.fixture
def no_display(monkeypatch, tmp_path):
    """No display, and a scratch working directory: the default --out-dir (outputs) never lands in the repository."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv('DISPLAY', raising=False)
    monkeypatch.delenv('WAYLAND_DISPLAY', raising=False)


def fails_with(demo_module, argv: List, capsys) -> str:
    """Run the demo's main in this process; it must exit with status 2 (argparse-style); return stderr."""
    with pytest.raises(SystemExit) as exit_info:
        demo_module.main([str(arg) for arg in argv])
    assert exit_info.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope='module')
def small_images(tmp_path_factory) -> Path:
    from brs_detr.datasets.toy_coco import make_toy_coco
    return Path(make_toy_coco(str(tmp_path_factory.mktemp('demo_inputs') / 'set'), num_train=1, num_val=2,
                              seed=3)) / 'val'


def test_missing_config_and_weights(demo_module, small_images, tmp_path, no_display):
    from brs_detr.apis.launch import ToolInputError

    with pytest.raises(ToolInputError, match=f'config file not found: {tmp_path / "typo.py"}'):
        demo_module.main([str(small_images), str(tmp_path / 'typo.py')])
    with pytest.raises(ToolInputError, match=f'weights file not found: {tmp_path / "none.pth"}'):
        demo_module.main([str(small_images), str(ATSS_CONFIG), '--weights', str(tmp_path / 'none.pth')])


def test_bad_arguments(demo_module, small_images, capsys, no_display):
    from brs_detr.apis.launch import ToolInputError

    assert 'between 0 and 1, got 1.5' in fails_with(demo_module, [small_images, ATSS_CONFIG, '--score-thr', '1.5'],
                                                    capsys)
    assert 'at least 1, got 0' in fails_with(demo_module, [small_images, ATSS_CONFIG, '--batch-size', '0'], capsys)
    err = fails_with(demo_module, [small_images, ATSS_CONFIG, '--show'], capsys)
    assert '--show needs a display (DISPLAY/WAYLAND_DISPLAY is not set)' in err
    with pytest.raises(ToolInputError, match='--cfg-options model.test_cfg.max_per_imgs: no such key'):
        demo_module.main([str(small_images), str(ATSS_CONFIG), '--cfg-options', 'model.test_cfg.max_per_imgs=3'])


def test_inputs_that_name_no_image(demo_module, small_images, tmp_path, no_display):
    from brs_detr.apis import ImageInputError

    with pytest.raises(ImageInputError, match=r"no image matched the pattern '.*/\*\.jpg'"):
        demo_module.main([str(small_images / '*.jpg'), str(ATSS_CONFIG)])
    with pytest.raises(ImageInputError, match=f'no such image file or folder: {tmp_path / "x.png"}'):
        demo_module.main([str(tmp_path / 'x.png'), str(ATSS_CONFIG)])
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ImageInputError, match=r'no image \(.*\) in folder .*empty'):
        demo_module.main([str(tmp_path / 'empty'), str(ATSS_CONFIG)])


def test_unreadable_images_are_named(demo_module, small_images, tmp_path, no_display):
    from brs_detr.apis import ImageInputError

    text = tmp_path / 'notes.png'
    text.write_text('not an image')
    with pytest.raises(ImageInputError, match=f'cannot read image {text}: not an image file'):
        demo_module.main([str(small_images), str(text), str(ATSS_CONFIG)])
    # a valid PNG header followed by nothing: found only when the pipeline decodes it
    truncated = tmp_path / 'truncated.png'
    truncated.write_bytes((small_images / '000001.png').read_bytes()[:64])
    with pytest.raises(ImageInputError, match=f'cannot read image {truncated}'), \
            brs_detr_warns('no weights given'):  # the model is built before the image is decoded
        demo_module.main([str(truncated), str(ATSS_CONFIG), '--out-dir', str(tmp_path / 'out')])
    assert not (tmp_path / 'out' / 'vis').exists()


@pytest.mark.slow  # uses the trained checkpoints
def test_weights_of_another_model_are_refused(demo_module, demo_env, no_display):
    """ATSS weights for the Mask R-CNN config: the missing and unexpected keys are named."""
    from brs_detr.apis import WeightsMismatchError

    with pytest.raises(WeightsMismatchError) as error:
        demo_module.main([str(demo_env['val_dir']), str(MASK_CONFIG), '--weights', str(demo_env['atss'])])
    message = str(error.value)
    assert message.startswith(f'the weights {demo_env["atss"]} do not fit the model of {MASK_CONFIG}')
    assert re.search(r'\d+ missing from the checkpoint: rpn_head\.', message), message
    assert re.search(r'\d+ in the checkpoint but not in the model: bbox_head\.', message), message


#: --cfg-options that give the toy config 5 classes (every head follows the datasets' metainfo).
FIVE_CLASSES = [f'{split}_dataloader.dataset.metainfo.{key}' for split in ('train', 'val', 'test') for key in (
    f'classes=[{",".join(CLASSES)},square,disc]', 'palette=[(230,40,40),(40,210,40),(30,60,230),(9,9,9),(99,99,99)]')]


@pytest.mark.slow  # uses the trained checkpoints
def test_weights_of_another_shape_are_refused(demo_module, demo_env, tmp_path, no_display):
    """Same model, 5 classes instead of 3: the reshaped keys are named."""
    from brs_detr.apis import WeightsMismatchError

    reshaped = (r'2 with another shape in the checkpoint: bbox_head\.atss_cls\.weight: checkpoint \(3, 64, 3, 3\) vs '
                r'model \(5, 64, 3, 3\), bbox_head\.atss_cls\.bias: checkpoint \(3,\) vs model \(5,\)')
    with pytest.raises(WeightsMismatchError, match=reshaped):
        demo_module.main([str(demo_env['val_dir']), str(ATSS_CONFIG), '--weights', str(demo_env['atss']),
                          '--cfg-options', *FIVE_CLASSES, '--out-dir', str(tmp_path)])


@pytest.mark.slow  # uses the trained checkpoints
def test_untrusted_pickled_checkpoint_is_refused(demo_module, demo_env, tmp_path, no_display):
    """A Runner checkpoint (pickled objects) copied out of its work_dir is not unpickled; a state dict loads."""
    from brs_detr.fileio.checkpoint import UntrustedCheckpointError

    copied = tmp_path / 'copied.pth'
    shutil.copyfile(demo_env['atss'], copied)
    with pytest.raises(UntrustedCheckpointError, match='Refusing to load checkpoint'):
        demo_module.main([str(demo_env['val_dir']), str(ATSS_CONFIG), '--weights', str(copied)])
    plain = tmp_path / 'plain.pth'
    torch.save(torch.load(demo_env['atss'], weights_only=False)['state_dict'], plain)
    out_dir = tmp_path / 'out'
    demo_module.main([str(demo_env['val_dir'] / '000001.png'), str(ATSS_CONFIG), '--weights', str(plain),
                      '--out-dir', str(out_dir), '--no-save-vis'])
    # --no-save-vis writes predictions only
    assert sorted(p.name for p in out_dir.iterdir()) == ['preds']
    assert load_preds(out_dir / 'preds' / '000001.json')['scores']
    # the weights carry no class names: they come from the config (mmdet would take COCO's 80)
    from brs_detr.apis import BRSDetInferencer
    inferencer = BRSDetInferencer(str(ATSS_CONFIG), weights=str(plain), device='cpu', show_progress=False)
    assert inferencer.model.dataset_meta['classes'] == list(CLASSES)
    assert inferencer.model.dataset_meta['palette'] == PALETTE


@pytest.mark.slow  # uses the trained checkpoints
def test_palette_and_print_result(demo_module, demo_env, tmp_path, capsys, no_display):
    """--palette coco draws in COCO's colours (checked on the pixels); --print-result prints the predictions."""
    from mmdet.visualization.palette import get_palette

    image = demo_env['val_dir'] / '000002.png'
    demo_module.main([str(image), str(ATSS_CONFIG), '--weights', str(demo_env['atss']), '--out-dir', str(tmp_path),
                      '--palette', 'coco', '--print-result', '--score-thr', '0.1'])
    assert "'predictions': [{'labels': [" in capsys.readouterr().out
    preds = load_preds(tmp_path / 'preds' / '000002.json')
    shown = [i for i, score in enumerate(preds['scores']) if score > 0.1]
    coco_palette = get_palette('coco', len(CLASSES))
    assert coco_palette[:len(CLASSES)] != list(PALETTE)
    verified = check_drawing(read_rgb(tmp_path / 'vis' / '000002.png'), read_rgb(image),
                             [preds['bboxes'][i] for i in shown], [preds['labels'][i] for i in shown], coco_palette,
                             CLASSES, scores=[preds['scores'][i] for i in shown])
    assert verified['box_pixels'] >= 10, verified


@pytest.mark.slow  # uses the trained checkpoints
def test_python_api_takes_bgr_arrays(demo_env, tmp_path):
    """An image passed as a BGR array (cv2.imread) gives the same drawing and predictions as its file."""
    import cv2

    from brs_detr.apis import BRSDetInferencer

    image = demo_env['val_dir'] / '000002.png'
    inferencer = BRSDetInferencer(str(ATSS_CONFIG), weights=str(demo_env['atss']), device='cpu', show_progress=False)
    from_file = inferencer(str(image), out_dir=str(tmp_path / 'file'), no_save_pred=False)
    from_array = inferencer(cv2.imread(str(image)), out_dir=str(tmp_path / 'array'), no_save_pred=False)
    assert sorted(p.name for p in (tmp_path / 'array' / 'vis').iterdir()) == ['00000000.png']
    np.testing.assert_array_equal(read_rgb(tmp_path / 'array' / 'vis' / '00000000.png'),
                                  read_rgb(tmp_path / 'file' / 'vis' / '000002.png'))
    assert from_array['predictions'] == from_file['predictions']
    assert load_preds(tmp_path / 'array' / 'preds' / '00000000.json') == from_file['predictions'][0]


def test_more_classes_than_names(no_display, tmp_path):
    """A checkpoint whose meta names fewer classes than its model predicts: the others are drawn as "class N", not an
    IndexError."""
    from brs_detr.apis import BRSDetInferencer

    five = {option.split('=')[0]: [*CLASSES, 'square', 'disc'] for option in FIVE_CLASSES if '.classes=' in option}
    with brs_detr_warns('no weights given'):
        model = BRSDetInferencer(str(ATSS_CONFIG), device='cpu', show_progress=False, cfg_options=five).model
    weights = tmp_path / 'five_classes_three_names.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(dataset_meta=dict(classes=list(CLASSES)))), weights)
    with brs_detr_warns('the model predicts 5 classes but 3 class names are known'):
        inferencer = BRSDetInferencer(str(ATSS_CONFIG), weights=str(weights), device='cpu', show_progress=False,
                                      cfg_options=five)
    assert inferencer.model.dataset_meta['classes'] == [*CLASSES, 'class 3', 'class 4']


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_cuda_device_without_cuda(demo_module, small_images, no_display):
    from brs_detr.apis import DeviceError

    with pytest.raises(DeviceError, match='--device cuda:0: CUDA is not available on this machine'):
        demo_module.main([str(small_images), str(ATSS_CONFIG), '--device', 'cuda:0'])


# ----------------------------------------------------------------------------- input expansion and output names
def test_collect_images_files_folders_globs(tmp_path):
    from brs_detr.apis import collect_images

    for rel in ('a/1.png', 'a/2.JPG', 'a/notes.txt', 'b/c/3.jpeg', 'b/1.png'):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b'')
    folder = sorted(collect_images([str(tmp_path / 'a')], check_readable=False))
    assert folder == [str(tmp_path / 'a' / '1.png'), str(tmp_path / 'a' / '2.JPG')]
    recursive = collect_images([str(tmp_path / '**' / '*.png'), str(tmp_path / 'a' / '1.png')], check_readable=False)
    assert recursive == [str(tmp_path / 'a' / '1.png'), str(tmp_path / 'b' / '1.png')]  # each file once
    assert collect_images([str(tmp_path / 'b' / '*' / '*')], check_readable=False) == [str(tmp_path / 'b/c/3.jpeg')]


def test_output_names_are_distinct():
    from brs_detr.apis import output_names

    names = output_names(['d/a/x.jpg', 'd/b/x.jpg', 'd/a/x.png', 'd/a/y.png'])
    assert names == {'d/a/x.jpg': 'a_x_jpg', 'd/b/x.jpg': 'b_x_jpg', 'd/a/x.png': 'a_x_png', 'd/a/y.png': 'y'}
    # flattened paths that still clash get their input position
    assert output_names(['p/a_b/x.png', 'p/a/b/x.png']) == {'p/a_b/x.png': 'a_b_x_png_0', 'p/a/b/x.png': 'a_b_x_png_1'}
    assert output_names(['a_x_png.png', 'q/a/x.png', 'q/x.png']) == {
        'a_x_png.png': 'a_x_png_0', 'q/a/x.png': 'a_x_png_1', 'q/x.png': 'x_png'}
