# AP-ATSS: ATSS trained with the AP loss (binary targets; BRS paper Table 1: 38.1 AP; BRS README: 38.3).
# As released (rank_based_atss_head.py of the BRS release): the interpolated AP loss of the aLRP/RS code with
# delta 1.0, and a GIoU box loss weighted by the positives' scores with a fixed weight of 2.0 (the head's
# loc_weight), not value-matched to the ranking loss as the RS/BRS heads are. Non-interpolated AP (Eq. 9):
# loss_cls=dict(interpolated=False).
_base_ = './rs-atss_r50_fpn_4xb4-12e_coco.py'

model = dict(
    bbox_head=dict(
        loss_cls=dict(_delete_=True, type='APLoss', delta=1.0, interpolated=True, loss_weight=1.0),
        value_matched_bbox=False,
        loss_bbox=dict(type='GIoULoss', loss_weight=2.0)))
