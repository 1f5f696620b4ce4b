# Tiny Co-Deformable-DETR for tests and CPU demos: ResNet-18 at 1/4 width, 64-d transformer with
# 2 encoder + 2 decoder layers, 30 queries, the same heads and losses as the ResNet-50 model, on the
# toy COCO set of tools/make_toy_coco.py (3 classes, 128x128 images). No pretrained weights.
#   python tools/make_toy_coco.py data/toy_coco
#   python tools/train.py configs/co_deformable_detr/co_deformable_detr_r18-tiny_1xb2-1e_toy-coco.py
_base_ = [
    '../_base_/models/co_deformable_detr_r50.py',
    '../_base_/datasets/toy_coco_detection.py',
    'mmdet::_base_/default_runtime.py',
    '../_base_/tta/detr_flip_toy.py',
]
custom_imports = dict(imports=['brs_detr'], allow_failed_imports=False)

# every head follows the datasets' metainfo classes (brs_detr.datasets.num_classes)
num_classes = 'from_dataset'
base_channels = 16
embed_dims = 64
num_queries = 30
aux_loss_weight = 12.0  # lambda_2 * num_dec_layer of the full model

model = dict(
    num_queries=num_queries,
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(
        depth=18,
        stem_channels=base_channels,
        base_channels=base_channels,
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        init_cfg=None),
    neck=dict(
        in_channels=[base_channels * 2, base_channels * 4, base_channels * 8],
        out_channels=embed_dims),
    encoder=dict(
        num_layers=2,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=128))),
    decoder=dict(
        num_layers=2,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims),
            cross_attn_cfg=dict(embed_dims=embed_dims),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=128))),
    positional_encoding=dict(num_feats=embed_dims // 2),
    bbox_head=dict(
        num_classes=num_classes, embed_dims=embed_dims, max_pos_coords=num_queries),
    rpn_head=dict(in_channels=embed_dims, feat_channels=embed_dims),
    roi_head=[
        dict(
            type='CoStandardRoIHead',
            bbox_roi_extractor=dict(
                type='SingleRoIExtractor',
                roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
                out_channels=embed_dims,
                featmap_strides=[8, 16, 32, 64],
                finest_scale=112),
            bbox_head=dict(
                type='Shared2FCBBoxHead',
                in_channels=embed_dims,
                fc_out_channels=128,
                roi_feat_size=7,
                num_classes=num_classes,
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder',
                    target_means=[0.0, 0.0, 0.0, 0.0],
                    target_stds=[0.1, 0.1, 0.2, 0.2]),
                reg_class_agnostic=False,
                reg_decoded_bbox=True,
                loss_cls=dict(
                    type='CrossEntropyLoss', use_sigmoid=False,
                    loss_weight=1.0 * aux_loss_weight),
                loss_bbox=dict(type='GIoULoss', loss_weight=10.0 * aux_loss_weight)))
    ],
    aux_bbox_head=[
        dict(
            type='CoATSSHead',
            num_classes=num_classes,
            in_channels=embed_dims,
            stacked_convs=1,
            feat_channels=embed_dims,
            anchor_generator=dict(
                type='AnchorGenerator',
                ratios=[1.0],
                octave_base_scale=8,
                scales_per_octave=1,
                strides=[8, 16, 32, 64, 128]),
            bbox_coder=dict(
                type='DeltaXYWHBBoxCoder',
                target_means=[0.0, 0.0, 0.0, 0.0],
                target_stds=[0.1, 0.1, 0.2, 0.2]),
            loss_cls=dict(
                type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                loss_weight=1.0 * aux_loss_weight),
            loss_bbox=dict(type='GIoULoss', loss_weight=2.0 * aux_loss_weight),
            loss_centerness=dict(
                type='CrossEntropyLoss', use_sigmoid=True, loss_weight=1.0 * aux_loss_weight)),
    ],
    train_cfg=[
        dict(
            assigner=dict(
                type='Float32HungarianAssigner',  # float32 costs under --amp
                match_costs=[
                    dict(type='FocalLossCost', weight=2.0),
                    dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                    dict(type='IoUCost', iou_mode='giou', weight=2.0)
                ])),
        dict(
            rpn=dict(
                assigner=dict(
                    type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3,
                    min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1),
                sampler=dict(
                    type='RandomSampler', num=64, pos_fraction=0.5, neg_pos_ub=-1,
                    add_gt_as_proposals=False),
                allowed_border=-1,
                pos_weight=-1,
                debug=False),
            rpn_proposal=dict(
                nms_pre=200, max_per_img=100, nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0),
            rcnn=dict(
                assigner=dict(
                    type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5,
                    min_pos_iou=0.5, match_low_quality=False, ignore_iof_thr=-1),
                sampler=dict(
                    type='RandomSampler', num=64, pos_fraction=0.25, neg_pos_ub=-1,
                    add_gt_as_proposals=True),
                pos_weight=-1,
                debug=False)),
        dict(assigner=dict(type='ATSSAssigner', topk=9), allowed_border=-1, pos_weight=-1,
             debug=False),
    ],
    test_cfg=[
        dict(max_per_img=num_queries),
        dict(
            rpn=dict(
                nms_pre=200, max_per_img=100, nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0),
            rcnn=dict(score_thr=0.0, nms=dict(type='nms', iou_threshold=0.5), max_per_img=30)),
        dict(nms_pre=200, min_bbox_size=0, score_thr=0.0, nms=dict(type='nms', iou_threshold=0.6),
             max_per_img=30),
    ])

max_epochs = 1
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=1)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(
        custom_keys={
            'backbone': dict(lr_mult=0.1),
            'sampling_offsets': dict(lr_mult=0.1),
            'reference_points': dict(lr_mult=0.1)
        }))
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[1], gamma=0.1)
]
default_hooks = dict(logger=dict(type='LoggerHook', interval=10))
auto_scale_lr = dict(enable=False, base_batch_size=2)
