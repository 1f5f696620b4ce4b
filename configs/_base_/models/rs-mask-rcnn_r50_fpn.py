# Model part of RS-Mask R-CNN (Rank & Sort loss) on mmdet's Mask R-CNN R50-FPN model base, for the configs that pair
# it with a dataset base of their own (Cityscapes, LVIS). The heads and training settings are those of
# configs/rank_based/rs-mask-rcnn_r50_fpn_4xb4-12e_coco.py (see its header and docs/rank_based_heads.md): ranking loss
# with IoU targets over all anchors and all proposals, GIoU value-matched to it, RPN coder stds (0.1, 0.1, 0.2, 0.2)
# and all RPN losses x 0.2, Dice mask loss value-matched to the RoI ranking loss on at most 200 positives, test
# score threshold 0.40. The R-CNN assigner keeps match_low_quality=True of mmdet's Mask R-CNN base, as the
# authors' Cityscapes and LVIS configs do.
_base_ = 'mmdet::_base_/models/mask-rcnn_r50_fpn.py'
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
        type='RankBasedStandardRoIHead',
        max_masks_per_batch=200,
        bbox_head=dict(
            type='RankBasedShared2FCBBoxHead',
            num_classes='from_dataset',  # the datasets' metainfo classes (brs_detr.datasets.num_classes)
            reg_decoded_bbox=True,
            loss_cls=dict(_delete_=True, type='RankSortLoss', delta=0.5, loss_weight=1.0),
            loss_bbox=dict(_delete_=True, type='GIoULoss', loss_weight=1.0)),
        mask_head=dict(
            type='RankBasedFCNMaskHead',
            num_classes='from_dataset',
            # mmdet's DiceLoss adds eps to both sums: 2 x 5e-6 = the released 1e-5
            loss_mask=dict(
                _delete_=True, type='DiceLoss', use_sigmoid=True, activate=True, naive_dice=False, eps=5e-6,
                loss_weight=1.0))),
    train_cfg=dict(
        rpn=dict(sampler=dict(_delete_=True, type='PseudoSampler')),
        # keeps every proposal (num exceeds any proposal count, nothing is drawn at random) and adds the gt boxes
        rcnn=dict(
            sampler=dict(
                _delete_=True,
                type='RandomSampler',
                num=10**9,
                pos_fraction=1.0,
                neg_pos_ub=-1,
                add_gt_as_proposals=True))),
    test_cfg=dict(rcnn=dict(score_thr=0.40)))
