# RS-Cascade R-CNN (Rank & Sort loss), the cascade baseline of the BRS paper (Table 1; 41.1 AP reported).
# Changes with respect to mmdet's Cascade R-CNN, following the released RS/BRS configs:
# * RPN as in rs-faster-rcnn: ranking loss over all anchors, GIoU value-matched, coder stds (0.1, 0.1, 0.2, 0.2),
#   all RPN losses x 0.2; 1000 training proposals per image after NMS (2000 before), as released (mmdet's Cascade
#   R-CNN keeps 2000);
# * three rank-based class-agnostic box heads, all with coder stds (0.1, 0.1, 0.2, 0.2) and GIoU on decoded boxes,
#   stage loss weights [1, 1, 1]; every proposal (plus the gt boxes) enters each stage, no sampling;
# * test score threshold 0.40; SGD lr 0.012 at a total batch of 16 (4 GPUs x 4 images).
# The box heads must stay class-agnostic: mmdet's CascadeRoIHead picks the refinement class at test time from the
# scores minus their last column (a background column the rank-based heads do not have).
_base_ = 'mmdet::cascade_rcnn/cascade-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['brs_detr'], allow_failed_imports=False)

rank_loss = dict(type='RankSortLoss', delta=0.5, loss_weight=1.0)
rank_based_bbox_head = dict(
    type='RankBasedShared2FCBBoxHead',
    in_channels=256,
    fc_out_channels=1024,
    roi_feat_size=7,
    num_classes='from_dataset',  # the datasets' metainfo classes (brs_detr.datasets.num_classes)
    bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.], target_stds=[0.1, 0.1, 0.2, 0.2]),
    reg_class_agnostic=True,
    reg_decoded_bbox=True,
    loss_cls=rank_loss,
    # value-matched to the ranking loss: its weight must stay 1 (the head raises otherwise)
    loss_bbox=dict(type='GIoULoss', loss_weight=1.0))


def all_proposals_stage(iou_thr: float) -> dict:
    """train_cfg of one R-CNN stage: max-IoU assignment, every proposal kept and the gt boxes added."""
    return dict(
        assigner=dict(
            type='MaxIoUAssigner',
            pos_iou_thr=iou_thr,
            neg_iou_thr=iou_thr,
            min_pos_iou=iou_thr,
            match_low_quality=False,
            ignore_iof_thr=-1),
        sampler=dict(type='RandomSampler', num=10**9, pos_fraction=1.0, neg_pos_ub=-1, add_gt_as_proposals=True),
        pos_weight=-1,
        debug=False)


model = dict(
    rpn_head=dict(
        type='RankBasedRPNHead',
        bbox_coder=dict(target_stds=[0.1, 0.1, 0.2, 0.2]),
        reg_decoded_bbox=True,
        loss_cls=dict(_delete_=True, **rank_loss),
        loss_bbox=dict(_delete_=True, type='GIoULoss', loss_weight=1.0),
        head_weight=0.2),
    roi_head=dict(stage_loss_weights=[1, 1, 1], bbox_head=[rank_based_bbox_head] * 3),
    train_cfg=dict(
        rpn=dict(sampler=dict(_delete_=True, type='PseudoSampler')),
        rpn_proposal=dict(nms_pre=2000, max_per_img=1000),
        rcnn=[all_proposals_stage(iou_thr) for iou_thr in (0.5, 0.6, 0.7)]),
    test_cfg=dict(rcnn=dict(score_thr=0.40)))

train_dataloader = dict(batch_size=4, num_workers=4)
optim_wrapper = dict(optimizer=dict(lr=0.012))
auto_scale_lr = dict(enable=False, base_batch_size=16)
