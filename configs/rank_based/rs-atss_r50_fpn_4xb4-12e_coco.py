# RS-ATSS (Rank & Sort loss, Oksuz et al. 2021), the ATSS baseline of the BRS paper (Table 1; 39.8 AP reported
# for RS and BRS). Changes with respect to mmdet's ATSS: no centerness branch, ranking loss with IoU targets over
# all anchors, GIoU box loss weighted by the positives' scores and value-matched to the ranking loss (Eq. 17),
# three anchor scales per location (octave base 4, 3 scales per octave) as in the released RS/BRS ATSS configs,
# SGD lr 0.008 at a total batch of 16 (4 GPUs x 4 images).
_base_ = ['mmdet::atss/atss_r50_fpn_1x_coco.py', '../_base_/tta/cnn_flip_ms_coco.py']
custom_imports = dict(imports=['brs_detr'], allow_failed_imports=False)

model = dict(
    bbox_head=dict(
        type='RankBasedATSSHead',
        num_classes='from_dataset',  # the datasets' metainfo classes (brs_detr.datasets.num_classes)
        anchor_generator=dict(octave_base_scale=4, scales_per_octave=3),
        loss_cls=dict(_delete_=True, type='RankSortLoss', delta=0.5, loss_weight=1.0),
        # value-matched to the ranking loss: its weight must stay 1 (the head raises otherwise)
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        loss_centerness=None))

train_dataloader = dict(batch_size=4, num_workers=4)
optim_wrapper = dict(optimizer=dict(lr=0.008))
auto_scale_lr = dict(enable=False, base_batch_size=16)
