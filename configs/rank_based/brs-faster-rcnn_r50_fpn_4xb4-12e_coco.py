# BRS-Faster R-CNN: RS-Faster R-CNN with the Bucketed Rank & Sort loss in the RPN and the RoI head
# (BRS paper Table 1: 39.5 AP, 0.17 s/iter vs 0.50 for RS).
_base_ = './rs-faster-rcnn_r50_fpn_4xb4-12e_coco.py'

model = dict(
    rpn_head=dict(loss_cls=dict(type='BucketedRankSortLoss')),
    roi_head=dict(bbox_head=dict(loss_cls=dict(type='BucketedRankSortLoss'))))
