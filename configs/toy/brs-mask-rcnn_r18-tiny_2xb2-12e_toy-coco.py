# Tiny BRS-Mask R-CNN (ResNet-18 at 1/4 width, 3-level FPN) on the toy COCO set of tools/make_toy_coco.py, whose
# annotations carry exact instance masks. The losses and settings of
# configs/rank_based/brs-mask-rcnn_r50_fpn_4xb4-12e_coco.py (BRS in the RPN and the RoI box head, value-matched
# GIoU and Dice, at most 200 masks per batch), the optimizer and schedule of the toy ATSS config. No pretrained
# weights; used by tests/test_rank_based_mask_rcnn.py end to end and as a CPU demo:
#   python tools/make_toy_coco.py data/toy_coco
#   python tools/train.py configs/toy/brs-mask-rcnn_r18-tiny_2xb2-12e_toy-coco.py
_base_ = './atss_r18-tiny_2xb2-12e_toy-coco.py'
# no test-time augmentation: mmdet's DetTTAModel merges boxes only, not masks (tools/test.py --tta says so)
tta_model = None
tta_pipeline = None

# every head follows the datasets' metainfo classes (brs_detr.datasets.num_classes)
num_classes = 'from_dataset'
neck_channels = 64  # the FPN width of the base config
strides = [8, 16, 32]
rank_loss = dict(type='BucketedRankSortLoss', delta=0.5, loss_weight=1.0)
box_coder = dict(type='DeltaXYWHBBoxCoder', target_means=[.0, .0, .0, .0], target_stds=[0.1, 0.1, 0.2, 0.2])

model = dict(
    _delete_=True,
    type='MaskRCNN',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_mask=True,
        pad_size_divisor=32),
    # the tiny ResNet-18 and FPN of the toy ATSS config (64 channels at strides 8, 16, 32)
    backbone={{_base_.model.backbone}},
    neck={{_base_.model.neck}},
    rpn_head=dict(
        type='RankBasedRPNHead',
        in_channels=neck_channels,
        feat_channels=neck_channels,
        # anchors of 32, 64 and 128 px: toy objects are 25-58 px at 128x128
        anchor_generator=dict(type='AnchorGenerator', scales=[4], ratios=[0.5, 1.0, 2.0], strides=strides),
        bbox_coder=box_coder,
        reg_decoded_bbox=True,
        loss_cls=rank_loss,
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        head_weight=0.2),
    roi_head=dict(
        type='RankBasedStandardRoIHead',
        max_masks_per_batch=200,
        bbox_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0),
            out_channels=neck_channels,
            featmap_strides=strides),
        bbox_head=dict(
            type='RankBasedShared2FCBBoxHead',
            in_channels=neck_channels,
            fc_out_channels=256,
            roi_feat_size=7,
            num_classes=num_classes,
            bbox_coder=box_coder,
            reg_class_agnostic=False,
            reg_decoded_bbox=True,
            loss_cls=rank_loss,
            loss_bbox=dict(type='GIoULoss', loss_weight=1.0)),
        mask_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
            out_channels=neck_channels,
            featmap_strides=strides),
        mask_head=dict(
            type='RankBasedFCNMaskHead',
            num_convs=2,
            in_channels=neck_channels,
            conv_out_channels=neck_channels,
            num_classes=num_classes)),
    train_cfg=dict(
        rpn=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                          match_low_quality=True, ignore_iof_thr=-1),
            sampler=dict(type='PseudoSampler'),
            allowed_border=-1,
            pos_weight=-1,
            debug=False),
        rpn_proposal=dict(nms_pre=1000, max_per_img=300, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        rcnn=dict(
            assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                          match_low_quality=True, ignore_iof_thr=-1),
            # every proposal, plus the gt boxes (as the rank-based COCO configs)
            sampler=dict(type='RandomSampler', num=10**9, pos_fraction=1.0, neg_pos_ub=-1, add_gt_as_proposals=True),
            mask_size=28,
            pos_weight=-1,
            debug=False)),
    test_cfg=dict(
        rpn=dict(nms_pre=1000, max_per_img=300, nms=dict(type='nms', iou_threshold=0.7), min_bbox_size=0),
        # the published 0.40 drops the early, still low ranking-loss scores of a few toy iterations
        rcnn=dict(score_thr=0.05, nms=dict(type='nms', iou_threshold=0.5), max_per_img=100, mask_thr_binary=0.5)))

backend_args = None
img_scale = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
