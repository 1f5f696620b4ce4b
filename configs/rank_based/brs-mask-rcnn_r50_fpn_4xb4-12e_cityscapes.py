# BRS-Mask R-CNN on Cityscapes: RS-Mask R-CNN on Cityscapes with the Bucketed Rank & Sort loss in the RPN and the RoI
# head (BRS paper Table 3: 43.3 AP, 0.19 s/iter vs 0.43 for RS).
_base_ = './rs-mask-rcnn_r50_fpn_4xb4-12e_cityscapes.py'

model = dict(
    rpn_head=dict(loss_cls=dict(type='BucketedRankSortLoss')),
    roi_head=dict(bbox_head=dict(loss_cls=dict(type='BucketedRankSortLoss'))))
