"""TimmBackbone: timm models as mmdet backbones (docs/timm_backbones.md).

Uses timm's own tiny test models (``test_convnext``, ``test_resnet``, ...: 0.1-0.4 M parameters) with random
weights; checkpoints are written by the tests from random models.
"""
import logging
import math
import os
import os.path as osp
import subprocess
import sys
import textwrap

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

import timm  # installed by tools/install.sh (requirements.txt)

import brs_detr  # noqa: F401  (registers the models)
from brs_detr.models.backbones import TimmBackbone, timm_feature_info, timm_weights_url
from brs_detr.fileio import UntrustedCheckpointError
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TINY_TIMM_CONFIG = osp.join(ROOT, 'configs', 'brs_detr', 'brs-detr_test-convnext-timm_1xb2-1e_toy-coco.py')
BRS_DETR_CONVNEXT_CONFIG = osp.join(ROOT, 'configs', 'brs_detr', 'brs-detr_convnext-t-timm_4xb4-12e_coco.py')
ATSS_CONVNEXT_CONFIG = osp.join(ROOT, 'configs', 'rank_based', 'brs-atss_convnext-t-timm_fpn_4xb4-12e_coco.py')
#: Configs without a timm backbone: building their models must not import timm.
NON_TIMM_CONFIGS = [
    'configs/brs_detr/brs-detr_r50_4xb4-12e_coco.py',
    'configs/brs_detr/brs-detr_swin-t-p4-w7_4xb4-12e_coco.py',
    'configs/brs_detr/brs-detr_r18-tiny_1xb2-1e_toy-coco.py',
    'configs/rank_based/brs-atss_r50_fpn_4xb4-12e_coco.py',
]
IMG_SIZE = 64

register_all_modules()
MMLogger.get_current_instance().setLevel(logging.ERROR)


def build_backbone(**kwargs) -> TimmBackbone:
    torch.manual_seed(0)
    return MODELS.build(dict(type='TimmBackbone', **kwargs))


def run_python(code: str, prelude: str = '', **env_overrides) -> subprocess.CompletedProcess:
    """Run ``prelude`` then ``code`` in a fresh interpreter (the test's) from the repository root."""
    env = dict(os.environ, OMP_NUM_THREADS='1', **env_overrides)
    script = textwrap.dedent(prelude) + textwrap.dedent(code)
    return subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


# --- the tiny BRS-DETR with a timm backbone -------------------------------------------------------------------


def tiny_batch():
    from mmengine.structures import InstanceData
    from mmdet.structures import DetDataSample
    torch.manual_seed(1)
    size = 128
    sample = DetDataSample(metainfo=dict(img_shape=(size, size), ori_shape=(size, size), pad_shape=(size, size),
                                         batch_input_shape=(size, size), scale_factor=(1.0, 1.0)))
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[10., 12., 70., 80.], [60., 30., 120., 110.]]),
                                       labels=torch.tensor([0, 2]))
    return torch.randn(1, 3, size, size), [sample]


def test_tiny_brs_detr_trains_through_the_timm_backbone():
    cfg = Config.fromfile(TINY_TIMM_CONFIG)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert isinstance(model.backbone, TimmBackbone)
    assert list(cfg.model.neck.in_channels) == model.backbone.out_channels
    model.train()
    losses = model.loss(*tiny_batch())
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    loss.backward()
    backbone_params = dict(model.backbone.named_parameters())
    assert backbone_params and all(param.requires_grad for param in backbone_params.values())
    no_grad = [name for name, param in backbone_params.items() if param.grad is None]
    assert not no_grad, f'no gradient reaches {no_grad}'
    stem = model.backbone.model.stem_0.weight.grad
    assert torch.isfinite(stem).all() and stem.abs().sum() > 0


# --- features, freezing, norm_eval ----------------------------------------------------------------------------


@pytest.mark.parametrize('model_name, out_indices', [
    ('test_convnext', (1, 2, 3)),
    ('test_convnext', (0, 2)),
    ('test_resnet', (1, 2, 3, 4)),
    ('test_efficientnet', (2, 3, 4)),
    ('test_mambaout', (1, 2, 3)),  # timm returns NHWC features for this one
])
def test_out_indices_give_nchw_features_with_the_announced_channels(model_name, out_indices):
    backbone = build_backbone(model_name=model_name, out_indices=out_indices)
    info = timm_feature_info(model_name, out_indices)
    assert backbone.out_channels == info['channels'] and backbone.out_strides == info['strides']
    assert len(info['channels']) == len(out_indices)
    height, width = IMG_SIZE, IMG_SIZE + 32
    features = backbone(torch.randn(2, 3, height, width))
    assert isinstance(features, tuple) and len(features) == len(out_indices)
    for feature, channels, stride in zip(features, info['channels'], info['strides']):
        assert feature.shape == (2, channels, math.ceil(height / stride), math.ceil(width / stride))


def backbone_step(backbone: TimmBackbone) -> None:
    backbone.train()
    features = backbone(torch.randn(2, 3, IMG_SIZE, IMG_SIZE))
    sum(feature.square().mean() for feature in features).backward()


def test_frozen_stages_get_no_gradient_and_stay_in_eval():
    backbone = build_backbone(model_name='test_convnext', out_indices=(1, 2, 3), frozen_stages=1)
    backbone_step(backbone)
    params = dict(backbone.model.named_parameters())
    # features 0 and 1 are stages 0 and 1; the stem runs before them
    frozen = {name for name in params if name.startswith(('stem_', 'stages_0.', 'stages_1.'))}
    assert frozen and all(not params[name].requires_grad and params[name].grad is None for name in frozen)
    trained = set(params) - frozen
    assert trained and all(params[name].grad is not None for name in trained)
    assert not backbone.model.stages_1.training and backbone.model.stages_2.training


def test_frozen_stages_of_a_timm_resnet_match_mmdet_resnet():
    """timm's feature 1 is layer1: frozen_stages=1 freezes what mmdet's ResNet(frozen_stages=1) freezes."""
    timm_backbone = build_backbone(model_name='resnet18', out_indices=(1, 2, 3, 4), frozen_stages=1)
    mmdet_resnet = MODELS.build(dict(type='ResNet', depth=18, frozen_stages=1, init_cfg=None))
    timm_frozen = {name.split('.', 1)[1] for name, param in timm_backbone.named_parameters()
                   if not param.requires_grad}
    mmdet_frozen = {name.replace('norm1', 'bn1') for name, param in mmdet_resnet.named_parameters()
                    if not param.requires_grad}
    assert timm_frozen == mmdet_frozen
    assert {name.split('.')[0] for name in timm_frozen} == {'conv1', 'bn1', 'layer1'}


def test_norm_eval_keeps_batchnorm_statistics():
    backbone = build_backbone(model_name='test_resnet', out_indices=(1, 2, 3), norm_eval=True)
    batch_norms = [module for module in backbone.modules() if isinstance(module, torch.nn.BatchNorm2d)]
    before = [module.running_mean.clone() for module in batch_norms]
    backbone_step(backbone)
    assert batch_norms and not any(module.training for module in batch_norms)
    assert all(torch.equal(old, module.running_mean) for old, module in zip(before, batch_norms))
    trained = build_backbone(model_name='test_resnet', out_indices=(1, 2, 3), norm_eval=False)
    backbone_step(trained)
    assert all(module.training for module in trained.modules() if isinstance(module, torch.nn.BatchNorm2d))


@pytest.mark.parametrize('kwargs, match', [
    (dict(out_indices=(2, 1)), 'increasing'),
    (dict(out_indices=(1, 2), frozen_stages=3), 'frozen_stages=3'),
    (dict(pretrained=True, init_cfg=dict(type='Pretrained', checkpoint='x.pth')), 'not both'),
])
def test_bad_arguments_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_backbone(model_name='test_convnext', **kwargs)


# --- weights from timm checkpoints ----------------------------------------------------------------------------


def save_random_timm_model(model_name: str, path: str, seed: int = 123, wrap: bool = False, **timm_kwargs) -> dict:
    """Save a random timm classification model as timm's hub does (a plain state dict); return its weights."""
    torch.manual_seed(seed)
    state_dict = timm.create_model(model_name, pretrained=False, **timm_kwargs).state_dict()
    if path.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(state_dict, path)
    else:
        torch.save(dict(state_dict=state_dict) if wrap else state_dict, path)
    return state_dict


def assert_loaded(backbone: TimmBackbone, source: dict) -> None:
    """Every weight of the feature layers equals the checkpoint's (timm renames stages.0 to stages_0)."""
    by_name = {name.replace('.', '_'): value for name, value in source.items()}
    own = backbone.model.state_dict()
    for name, value in own.items():
        key = name.split('.', 1)[1] if name.startswith('model.') else name  # timm's ViT feature wrapper
        assert torch.equal(value, by_name[key.replace('.', '_')]), name


@pytest.mark.parametrize('model_name, out_indices, file_name', [
    ('test_convnext', (1, 2, 3), 'model.safetensors'),  # timm's hub format
    ('test_convnext', (0, 1), 'nested.pth'),  # a training checkpoint: {'state_dict': ...}
    ('test_efficientnet', (1, 2, 3), 'plain.pth'),
    ('test_vit', (1, 2), 'model.safetensors'),  # feature wrapper keeps the model under .model
])
def test_init_cfg_loads_a_local_timm_checkpoint(tmp_path, model_name, out_indices, file_name):
    path = str(tmp_path / file_name)
    source = save_random_timm_model(model_name, path, wrap=file_name == 'nested.pth')
    backbone = build_backbone(model_name=model_name, out_indices=out_indices,
                              init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(AssertionError):
        assert_loaded(backbone, source)  # random weights before init_weights
    backbone.init_weights()
    assert_loaded(backbone, source)


def test_detector_init_weights_loads_the_backbone_checkpoint(tmp_path):
    path = str(tmp_path / 'test_convnext.safetensors')
    source = save_random_timm_model('test_convnext', path)
    cfg = Config.fromfile(TINY_TIMM_CONFIG)
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=path)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    assert_loaded(model.backbone, source)


def test_torchvision_resnet_weights_initialise_timm_resnet(tmp_path):
    """docs/timm_backbones.md: torchvision's ResNet files (torchvision://resnet50) fit timm's ResNets."""
    import torchvision
    torch.manual_seed(7)
    source = torchvision.models.resnet18().state_dict()
    path = str(tmp_path / 'resnet18-torchvision.pth')
    torch.save(source, path)
    backbone = build_backbone(model_name='resnet18', out_indices=(1, 2, 3, 4),
                              init_cfg=dict(type='Pretrained', checkpoint=path))
    backbone.init_weights()
    assert_loaded(backbone, source)


def test_checkpoint_of_the_backbone_itself_loads_with_prefix(tmp_path):
    """A detector checkpoint's backbone (keys backbone.model.stages_0...) initialises a TimmBackbone."""
    trained = build_backbone(model_name='test_convnext', out_indices=(1, 2))
    for param in trained.parameters():
        param.data.uniform_()
    path = str(tmp_path / 'detector.pth')
    torch.save(dict(state_dict={f'backbone.{key}': value for key, value in trained.state_dict().items()}), path)
    backbone = build_backbone(model_name='test_convnext', out_indices=(1, 2),
                              init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    backbone.init_weights()
    for (name, value), expected in zip(backbone.state_dict().items(), trained.state_dict().values()):
        assert torch.equal(value, expected), name


def test_checkpoint_errors_name_the_problem(tmp_path):
    backbone = build_backbone(model_name='test_convnext', out_indices=(1, 2))
    missing = str(tmp_path / 'absent.safetensors')
    with pytest.raises(FileNotFoundError, match='absent.safetensors'):
        backbone.load_timm_checkpoint(missing)
    other_model = str(tmp_path / 'resnet.safetensors')
    save_random_timm_model('test_resnet', other_model)
    with pytest.raises(KeyError, match=r'lacks \d+ of the \d+ weights'):
        backbone.load_timm_checkpoint(other_model)
    one_channel = str(tmp_path / 'one_channel.safetensors')
    save_random_timm_model('test_convnext', one_channel, in_chans=1)
    with pytest.raises(ValueError, match=r'other shapes .*stem.0.weight \(24, 1, 4, 4\) vs \(24, 3, 4, 4\)'):
        backbone.load_timm_checkpoint(one_channel)


class PickledObject:
    """Not a tensor: torch.load(weights_only=True) refuses to unpickle it."""


def test_checkpoints_load_through_brs_detr_safe_loading(tmp_path):
    path = str(tmp_path / 'untrusted.pth')
    state_dict = save_random_timm_model('test_convnext', str(tmp_path / 'plain.pth'))
    torch.save(dict(state_dict=state_dict, meta=PickledObject()), path)
    backbone = build_backbone(model_name='test_convnext', out_indices=(1, 2),
                              init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(UntrustedCheckpointError, match='untrusted.pth'):
        backbone.init_weights()


def test_missing_checkpoint_of_a_config_says_where_the_weights_are(tmp_path):
    cfg = Config.fromfile(ATSS_CONVNEXT_CONFIG)
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / osp.basename(cfg.model.backbone.init_cfg.checkpoint))
    backbone = MODELS.build(cfg.model.backbone)
    url = 'https://huggingface.co/timm/convnext_tiny.fb_in1k/resolve/main/model.safetensors'
    assert timm_weights_url(cfg.model.backbone.model_name) == url
    with pytest.raises(FileNotFoundError, match='convnext_tiny.fb_in1k.safetensors does not exist') as error:
        backbone.init_weights()
    assert url in str(error.value)


def test_hub_weights_without_network_give_a_clear_error(tmp_path):
    result = run_python("""
        import brs_detr
        from mmdet.registry import MODELS
        MODELS.build(dict(type='TimmBackbone', model_name='convnext_atto', pretrained=True))
        """, HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'), TORCH_HOME=str(tmp_path / 'torch'))
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith('RuntimeError: TimmBackbone: timm could not load the pretrained weights'), last_line
    assert 'https://huggingface.co/timm/convnext_atto' in last_line and "type='Pretrained'" in last_line


# --- configs --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize('config', [BRS_DETR_CONVNEXT_CONFIG, ATSS_CONVNEXT_CONFIG, TINY_TIMM_CONFIG])
def test_timm_configs_build_with_matching_neck_channels(config):
    cfg = Config.fromfile(config)
    assert cfg.model.backbone.type == 'TimmBackbone'
    if 'toy' not in config:
        assert cfg.model.backbone.init_cfg.type == 'Pretrained'
        assert cfg.model.backbone.model_name == 'convnext_tiny.fb_in1k' and not cfg.model.backbone.get('pretrained')
    model = MODELS.build(cfg.model)
    assert list(cfg.model.neck.in_channels) == model.backbone.out_channels
    with torch.no_grad():
        features = model.backbone.eval()(torch.randn(1, 3, IMG_SIZE, IMG_SIZE))
        model.neck(features)


# --- timm stays optional --------------------------------------------------------------------------------------

BLOCK_TIMM = """
    import sys

    class BlockTimm:
        def find_spec(self, name, path=None, target=None):
            if name == 'timm' or name.startswith('timm.'):
                raise ModuleNotFoundError(f"No module named '{name}' (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, BlockTimm())
    """


def test_brs_detr_imports_and_builds_without_timm():
    result = run_python(prelude=BLOCK_TIMM, code="""
        import brs_detr
        from mmengine.config import Config
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules()
        cfg = Config.fromfile('configs/brs_detr/brs-detr_r18-tiny_1xb2-1e_toy-coco.py')
        MODELS.build(cfg.model)
        assert 'timm' not in sys.modules
        try:
            MODELS.build(dict(type='TimmBackbone', model_name='test_convnext'))
        except ImportError as error:
            print('ERROR', type(error).__name__, error)
        """)
    assert result.returncode == 0, result.stderr
    assert 'ERROR TimmUnavailableError TimmBackbone needs timm' in result.stdout
    assert 'tools/install.sh' in result.stdout


def test_swin_and_resnet_configs_never_import_timm():
    result = run_python(f"""
        import sys
        import brs_detr
        from mmengine.config import Config
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules()
        for path in {NON_TIMM_CONFIGS!r}:
            cfg = Config.fromfile(path)
            cfg.model.backbone.init_cfg = None
            MODELS.build(cfg.model)
        print('timm imported:', 'timm' in sys.modules)
        """)
    assert result.returncode == 0, result.stderr
    assert 'timm imported: False' in result.stdout
