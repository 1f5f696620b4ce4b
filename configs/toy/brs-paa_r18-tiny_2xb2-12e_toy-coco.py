# Tiny BRS-PAA on the toy COCO set: the tiny ATSS model and schedule of atss_r18-tiny_2xb2-12e_toy-coco.py with
# RankBasedPAAHead (PAA's GMM assignment of the IoU > 0.1 candidates, BRS loss, value-matched GIoU, score voting),
# as in configs/rank_based/brs-paa_r50_fpn_4xb4-12e_coco.py. Used by tests/test_rank_based_paa_head.py end to end:
#   python tools/make_toy_coco.py data/toy_coco
#   python tools/train.py configs/toy/brs-paa_r18-tiny_2xb2-12e_toy-coco.py
_base_ = './atss_r18-tiny_2xb2-12e_toy-coco.py'

model = dict(
    type='PAA',
    bbox_head=dict(
        type='RankBasedPAAHead',
        reg_decoded_bbox=True,
        score_voting=True,
        topk=9,
        loss_cls=dict(_delete_=True, type='BucketedRankSortLoss', delta=0.5, loss_weight=1.0),
        assign_loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        loss_centerness=None),
    train_cfg=dict(
        _delete_=True,
        assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.1, neg_iou_thr=0.1, min_pos_iou=0, ignore_iof_thr=-1),
        allowed_border=-1,
        pos_weight=-1,
        debug=False),
    # ranking-loss scores of a short toy run are not calibrated: keep every box for evaluation
    test_cfg=dict(score_thr=0.0))
