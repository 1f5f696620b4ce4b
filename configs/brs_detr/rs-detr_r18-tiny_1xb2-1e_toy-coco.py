# Tiny RS-DETR on the toy COCO set (tests and CPU demos).
# BRS-DETR (brs-detr_r18-tiny_1xb2-1e_toy-coco.py) with the unbucketed Rank & Sort loss in every
# head, computed pair by pair:
# RankSortLoss(method='pairwise') has the O(P x N) cost profile of the published RS loss; this config exists
# for the speed comparison of the BRS paper (RS 4.14 s vs BRS 0.69 s per iteration on their GPUs).
# RankSortLoss(method='exact') gives the same loss values in O(N log P) instead.
_base_ = './brs-detr_r18-tiny_1xb2-1e_toy-coco.py'

rank_loss_delta = 0.5
rank_loss_method = 'pairwise'
query_rank_weight = 2.0  # query head and positive queries
aux_rank_weight = 5.0  # RoI and ATSS heads
rpn_rank_weight = 1.0
# every head follows the datasets' metainfo classes (brs_detr.datasets.num_classes)
num_classes = 'from_dataset'
embed_dims = 64

model = dict(
    bbox_head=dict(loss_cls=dict(type='RankSortLoss', method=rank_loss_method)),
    rpn_head=dict(loss_cls=dict(type='RankSortLoss', method=rank_loss_method)),
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
                    type='RankSortLoss',
                    method=rank_loss_method,
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
                type='RankSortLoss',
                method=rank_loss_method,
                delta=rank_loss_delta,
                loss_weight=aux_rank_weight),
            loss_bbox=dict(type='GIoULoss', loss_weight=1.0)),
    ],
)
