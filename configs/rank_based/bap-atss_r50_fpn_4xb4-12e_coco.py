# BAP-ATSS: ATSS trained with the Bucketed AP loss (BRS paper Sec. 4.2, Table 1: 38.5 AP, 0.15 s/iter vs 0.32).
_base_ = './ap-atss_r50_fpn_4xb4-12e_coco.py'

model = dict(bbox_head=dict(loss_cls=dict(type='BucketedAPLoss')))
