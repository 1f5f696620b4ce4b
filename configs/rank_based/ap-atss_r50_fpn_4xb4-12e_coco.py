# AP-ATSS: ATSS trained with the AP loss (binary targets, delta 1.0; BRS paper Table 1: 38.1 AP).
# Non-interpolated AP of Eq. 9 by default; APLoss(interpolated=True) reproduces the released AP loss.
_base_ = './rs-atss_r50_fpn_4xb4-12e_coco.py'

model = dict(bbox_head=dict(loss_cls=dict(_delete_=True, type='APLoss', delta=1.0, loss_weight=1.0)))
