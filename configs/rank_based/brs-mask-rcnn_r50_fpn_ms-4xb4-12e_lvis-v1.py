# BRS-Mask R-CNN on LVIS v1: RS-Mask R-CNN on LVIS v1 with the Bucketed Rank & Sort loss in the RPN and the RoI head
# (BRS paper Table 3: 25.8 AP, 0.35 s/iter vs 0.87 for RS).
_base_ = './rs-mask-rcnn_r50_fpn_ms-4xb4-12e_lvis-v1.py'

model = dict(
    rpn_head=dict(loss_cls=dict(type='BucketedRankSortLoss')),
    roi_head=dict(bbox_head=dict(loss_cls=dict(type='BucketedRankSortLoss'))))
