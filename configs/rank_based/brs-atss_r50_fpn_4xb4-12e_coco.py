# BRS-ATSS: RS-ATSS with the Bucketed Rank & Sort loss (BRS paper Sec. 4, Table 1: 39.8 AP, 0.15 s/iter vs 0.36).
_base_ = './rs-atss_r50_fpn_4xb4-12e_coco.py'

model = dict(bbox_head=dict(loss_cls=dict(type='BucketedRankSortLoss')))
