# BAP-ATSS: ATSS trained with the Bucketed AP loss (BRS paper Sec. 4.2, Table 1: 38.5 AP, 0.15 s/iter vs 0.32).
# AP-ATSS with the bucketed (non-interpolated) AP loss, delta 1.0; the box loss keeps AP-ATSS's fixed weight 2.0.
_base_ = './ap-atss_r50_fpn_4xb4-12e_coco.py'

model = dict(bbox_head=dict(loss_cls=dict(_delete_=True, type='BucketedAPLoss', delta=1.0, loss_weight=1.0)))
