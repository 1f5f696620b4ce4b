# RS-Faster R-CNN (Rank & Sort loss, Oksuz et al. 2021), the two-stage baseline of the BRS paper (Table 1; 39.4 AP
# reported). Changes with respect to mmdet's Faster R-CNN:
# * RPN: ranking loss with IoU targets over all anchors (no sampler), GIoU on decoded boxes value-matched to the
#   ranking loss, coder stds (0.1, 0.1, 0.2, 0.2), all RPN losses x 0.2 (head_weight) as released;
# * RoI head: sigmoid classifier without background column, ranking loss over all proposals (no sampling; the gt
#   boxes are added as proposals, as in the released configs), GIoU value-matched;
# * test score threshold 0.40 (released setting for the rank-based two-stage models: faster NMS, -0.01 AP);
# * SGD lr 0.012 at a total batch of 16 (4 GPUs x 4 images).
_base_ = 'mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['brs_detr'], allow_failed_imports=False)

model = dict(
    rpn_head=dict(
        type='RankBasedRPNHead',
        bbox_coder=dict(target_stds=[0.1, 0.1, 0.2, 0.2]),
        reg_decoded_bbox=True,
        loss_cls=dict(_delete_=True, type='RankSortLoss', delta=0.5, loss_weight=1.0),
        # value-matched to the ranking loss: its weight must stay 1 (the head raises otherwise)
        loss_bbox=dict(_delete_=True, type='GIoULoss', loss_weight=1.0),
        head_weight=0.2),
    roi_head=dict(
        bbox_head=dict(
            type='RankBasedShared2FCBBoxHead',
            num_classes='from_dataset',  # the datasets' metainfo classes (brs_detr.datasets.num_classes)
            reg_decoded_bbox=True,
            loss_cls=dict(_delete_=True, type='RankSortLoss', delta=0.5, loss_weight=1.0),
            loss_bbox=dict(_delete_=True, type='GIoULoss', loss_weight=1.0))),
    train_cfg=dict(
        rpn=dict(sampler=dict(_delete_=True, type='PseudoSampler')),
        # "sampling" that keeps every proposal (num exceeds any proposal count, nothing is drawn at random) and
        # adds the gt boxes as proposals
        rcnn=dict(
            sampler=dict(
                _delete_=True,
                type='RandomSampler',
                num=10**9,
                pos_fraction=1.0,
                neg_pos_ub=-1,
                add_gt_as_proposals=True))),
    test_cfg=dict(rcnn=dict(score_thr=0.40)))

train_dataloader = dict(batch_size=4, num_workers=4)
optim_wrapper = dict(optimizer=dict(lr=0.012))
auto_scale_lr = dict(enable=False, base_batch_size=16)
