# Tiny BRS-DETR with a timm backbone, for tests and CPU demos: brs-detr_r18-tiny_1xb2-1e_toy-coco.py with timm's
# test_convnext (a 0.2 M-parameter ConvNeXt timm keeps for testing), randomly initialised (no weights to download).
# Needs timm (installed by tools/install.sh).
#   python tools/make_toy_coco.py data/toy_coco
#   python tools/train.py configs/brs_detr/brs-detr_test-convnext-timm_1xb2-1e_toy-coco.py
_base_ = './brs-detr_r18-tiny_1xb2-1e_toy-coco.py'

model = dict(
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='test_convnext',
        out_indices=(1, 2, 3),  # strides 8, 16, 32 as the tiny ResNet-18
        frozen_stages=-1,
        init_cfg=None),
    # channels of test_convnext's features 1, 2, 3 (timm_feature_info('test_convnext', (1, 2, 3)))
    neck=dict(in_channels=[32, 48, 64]))
