# BRS-Mask R-CNN: RS-Mask R-CNN with the Bucketed Rank & Sort loss in the RPN and the RoI head
# (BRS paper Table 2: 36.2 mask AP, 0.24 s/iter vs 0.56 for RS).
_base_ = './rs-mask-rcnn_r50_fpn_4xb4-12e_coco.py'

model = dict(
    rpn_head=dict(loss_cls=dict(type='BucketedRankSortLoss')),
    roi_head=dict(bbox_head=dict(loss_cls=dict(type='BucketedRankSortLoss'))))
