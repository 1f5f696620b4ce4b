# Tiny BRS-DETR for tests and CPU demos: the tiny Co-Deformable-DETR (ResNet-18 at 1/4 width, 64-d transformer
# with 2 + 2 layers, 30 queries) with the BRS-DETR losses and settings of brs-detr_r50_4xb4-12e_coco.py, on the
# toy COCO set of tools/make_toy_coco.py (3 classes, 128x128 images). No pretrained weights. Two settings are
# those the toy measurements of docs/brs_detr.md were made with, not the release's (which the full configs follow):
# the RoI head also takes the gt boxes as proposals (every toy image has RoI positives from the first step) and the
# query head weights its box losses by the positives' scores.
#   python tools/make_toy_coco.py data/toy_coco
#   python tools/train.py configs/brs_detr/brs-detr_r18-tiny_1xb2-1e_toy-coco.py
_base_ = '../co_deformable_detr/co_deformable_detr_r18-tiny_1xb2-1e_toy-coco.py'

# every head follows the datasets' metainfo classes (brs_detr.datasets.num_classes)
num_classes = 'from_dataset'
embed_dims = 64
rank_loss_type = 'BucketedRankSortLoss'
rank_loss_delta = 0.5
query_rank_weight = 2.0  # query head and positive queries
aux_rank_weight = 5.0  # RoI and ATSS heads
rpn_rank_weight = 1.0
num_proposals = 100  # per image, into the unsampled RoI head

model = dict(
    bbox_head=dict(
        type='RankBasedCoDeformableDETRHead',
        loss_cls=dict(
            _delete_=True,
            type=rank_loss_type,
            delta=rank_loss_delta,
            loss_weight=query_rank_weight),
        # value-matched to the ranking loss (Eq. 17): weights must stay 1
        loss_bbox=dict(type='L1Loss', loss_weight=1.0),
        loss_iou=dict(type='GIoULoss', loss_weight=1.0)),
    rpn_head=dict(
        type='RankBasedRPNHead',
        reg_decoded_bbox=True,
        loss_cls=dict(
            _delete_=True,
            type=rank_loss_type,
            delta=rank_loss_delta,
            loss_weight=rpn_rank_weight),
        loss_bbox=dict(_delete_=True, type='GIoULoss', loss_weight=1.0),
        head_weight=1.0),
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
                type='RankBasedShared2FCBBoxHead',
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
                    type=rank_loss_type,
                    delta=rank_loss_delta,
                    loss_weight=aux_rank_weight),
                loss_bbox=dict(type='GIoULoss', loss_weight=1.0)))
    ],
    aux_bbox_head=[
        dict(
            type='CoRankBasedATSSHead',
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
            reg_decoded_bbox=True,
            loss_cls=dict(
                type=rank_loss_type,
                delta=rank_loss_delta,
                loss_weight=aux_rank_weight),
            loss_bbox=dict(type='GIoULoss', loss_weight=1.0)),
    ],
    # per head: [query head, rpn + roi head, atss head]; lists replace the base's lists entirely
    train_cfg=[
        dict(
            assigner=dict(
                type='Float32HungarianAssigner',  # float32 costs under --amp
                match_costs=[
                    dict(type='FocalLossCost', weight=4.0),
                    dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                    dict(type='IoUCost', iou_mode='giou', weight=2.0)
                ])),
        dict(
            rpn=dict(
                assigner=dict(
                    type='MaxIoUAssigner', pos_iou_thr=0.7, neg_iou_thr=0.3,
                    min_pos_iou=0.3, match_low_quality=True, ignore_iof_thr=-1),
                sampler=dict(type='PseudoSampler'),  # all anchors
                allowed_border=-1,
                pos_weight=-1,
                debug=False),
            rpn_proposal=dict(
                nms_pre=200, max_per_img=num_proposals, nms=dict(type='nms', iou_threshold=0.7),
                min_bbox_size=0),
            rcnn=dict(
                assigner=dict(
                    type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.5,
                    min_pos_iou=0.5, match_low_quality=False, ignore_iof_thr=-1),
                # all proposals plus the gt boxes (the full configs: all proposals, no gt boxes, as released)
                sampler=dict(
                    type='RandomSampler', num=10**9, pos_fraction=1.0, neg_pos_ub=-1,
                    add_gt_as_proposals=True),
                pos_weight=-1,
                debug=False)),
        dict(assigner=dict(type='ATSSAssigner', topk=9), allowed_border=-1, pos_weight=-1,
             debug=False),
    ])

param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=1, by_epoch=True, milestones=[1], gamma=0.2)
]
