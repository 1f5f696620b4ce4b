# BAP-PAA: PAA trained with the bucketed AP loss (BRS paper: 37.2 AP, 0.30 s/iter vs 0.45 for AP).
_base_ = './ap-paa_r50_fpn_4xb4-12e_coco.py'

model = dict(bbox_head=dict(loss_cls=dict(type='BucketedAPLoss')))
