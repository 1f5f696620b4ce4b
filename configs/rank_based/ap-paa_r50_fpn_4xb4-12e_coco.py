# AP-PAA: PAA trained with the AP loss (binary targets; BRS paper Table 1: 37.3 AP, 0.45 s/iter).
# As released (rank_based_paa_head.py of the BRS release): the interpolated AP loss of the aLRP/RS code with the
# head's delta 0.5 (the ATSS head passes 1.0, the PAA head its own default 0.5), and a GIoU box loss weighted by
# the positives' scores with weight 1.0, not value-matched to the ranking loss.
_base_ = './rs-paa_r50_fpn_4xb4-12e_coco.py'

model = dict(
    bbox_head=dict(
        loss_cls=dict(_delete_=True, type='APLoss', delta=0.5, interpolated=True, loss_weight=1.0),
        value_matched_bbox=False))
