# AP-PAA: PAA trained with the AP loss (binary targets, delta 1.0; BRS paper: 37.3 AP, 0.45 s/iter).
# Non-interpolated AP of Eq. 9 by default; APLoss(interpolated=True) reproduces the released AP loss.
_base_ = './rs-paa_r50_fpn_4xb4-12e_coco.py'

model = dict(bbox_head=dict(loss_cls=dict(_delete_=True, type='APLoss', delta=1.0, loss_weight=1.0)))
