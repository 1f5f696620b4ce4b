# RS-PAA (Rank & Sort loss), the PAA baseline of the BRS paper (Table 1; 40.8 AP reported for RS, 40.9 for BRS).
# Changes with respect to mmdet's PAA: no IoU-prediction branch; the GMM still separates the candidates by a
# score-based cost (focal loss + GIoU, assign_loss_cls), after which a ranking loss with IoU targets ranks all anchors
# and the GIoU loss is weighted by the positives' scores and value-matched to it (Eq. 17); three anchor scales per
# location (octave base 4, 3 scales per octave) as in the released RS/BRS PAA config; SGD lr 0.008 at a total batch
# of 16 (4 GPUs x 4 images).
_base_ = ['mmdet::paa/paa_r50_fpn_1x_coco.py', '../_base_/tta/cnn_flip_ms_coco.py']
custom_imports = dict(imports=['brs_detr'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        type='RankBasedPAAHead',
        num_classes='from_dataset',  # the datasets' metainfo classes (brs_detr.datasets.num_classes)
        anchor_generator=dict(octave_base_scale=4, scales_per_octave=3),
        loss_cls=dict(_delete_=True, type='RankSortLoss', delta=0.5, loss_weight=1.0),
        assign_loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
        # value-matched to the ranking loss: its weight must stay 1 (the head raises otherwise)
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        loss_centerness=None))

train_dataloader = dict(batch_size=4, num_workers=4)
optim_wrapper = dict(optimizer=dict(lr=0.008))
auto_scale_lr = dict(enable=False, base_batch_size=16)
