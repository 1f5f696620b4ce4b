# BRS-Mask R-CNN R101, 36 epochs, multi-scale training: RS-Mask R-CNN R101 with the Bucketed Rank & Sort loss in the
# RPN and the RoI head (BRS paper Table 2: 40.3 mask AP, 0.27 s/iter vs 0.59 for RS).
_base_ = './rs-mask-rcnn_r101_fpn_ms-4xb4-36e_coco.py'

model = dict(
    rpn_head=dict(loss_cls=dict(type='BucketedRankSortLoss')),
    roi_head=dict(bbox_head=dict(loss_cls=dict(type='BucketedRankSortLoss'))))
