# Tiny ATSS (ResNet-18 at 1/4 width, 3-level FPN, 2-conv head) on the toy COCO set of tools/make_toy_coco.py.
# Trains from scratch (no pretrained weights) on CPU; used by tests/test_tools_e2e.py and as a demo:
#   python tools/make_toy_coco.py data/toy_coco --num-train 200 --num-val 50
#   python tools/train.py configs/toy/atss_r18-tiny_2xb2-12e_toy-coco.py
_base_ = [
    '../_base_/datasets/toy_coco_detection.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/tta/cnn_flip_ms_toy.py',
]
custom_imports = dict(imports=['brs_detr'], allow_failed_imports=False)

base_channels = 16  # ResNet-18 stages then have 16, 32, 64, 128 channels
neck_channels = 64

model = dict(
    type='ATSS',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    backbone=dict(
        type='ResNet',
        depth=18,
        stem_channels=base_channels,
        base_channels=base_channels,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=None),
    neck=dict(
        type='FPN',
        in_channels=[base_channels * 2, base_channels * 4, base_channels * 8],
        out_channels=neck_channels,
        start_level=0,
        add_extra_convs='on_output',
        num_outs=3),
    bbox_head=dict(
        type='ATSSHead',
        num_classes='from_dataset',  # the datasets' metainfo classes (brs_detr.datasets.num_classes)
        in_channels=neck_channels,
        stacked_convs=2,
        feat_channels=neck_channels,
        anchor_generator=dict(
            type='AnchorGenerator',
            ratios=[1.0],
            # anchors of 32, 64 and 128 px on strides 8, 16, 32: toy objects are 25-58 px at 128x128
            octave_base_scale=4,
            scales_per_octave=1,
            strides=[8, 16, 32]),
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder',
            target_means=[.0, .0, .0, .0],
            target_stds=[0.1, 0.1, 0.2, 0.2]),
        loss_cls=dict(
            type='FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0),
        loss_centerness=dict(
            type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0)),
    train_cfg=dict(
        assigner=dict(type='ATSSAssigner', topk=9),
        allowed_border=-1,
        pos_weight=-1,
        debug=False),
    test_cfg=dict(
        nms_pre=1000,
        min_bbox_size=0,
        score_thr=0.05,
        nms=dict(type='nms', iou_threshold=0.6),
        max_per_img=100))

max_epochs = 12
train_cfg = dict(
    type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=4)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

# From scratch: AdamW converges much faster than SGD here.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-3, weight_decay=1e-4),
    clip_grad=dict(max_norm=10, norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[9, 11],
        gamma=0.1)
]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3))
log_processor = dict(window_size=10)

# The lr above is for 2 processes x 2 images; `tools/train.py --auto-scale-lr` rescales it.
auto_scale_lr = dict(enable=False, base_batch_size=4)
