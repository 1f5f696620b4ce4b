# RS-Faster R-CNN R101-DCNv2 (Rank & Sort loss), 36 epochs, multi-scale training: the stronger two-stage setting of
# the BRS paper (Table 1: 47.3 AP for RS). The RS authors publish a checkpoint of this model (RankSortLoss README,
# ranksort_faster_rcnn_r101_fpn_mstrain_dcn_3x_coco.py: 47.6 AP). rs-faster-rcnn_r50_fpn_4xb4-12e_coco.py with:
# * ResNet-101 from torchvision's ImageNet weights, modulated deformable convolutions (DCNv2, 4 offset groups) in
#   stages c3-c5;
# * training scale picked per image among shorter sides 480, 560, ..., 960 (long side <= 1333); test at 1333x800;
# * 36 epochs, lr x 0.1 after epochs 27 and 33 (500-iteration linear warm-up), SGD lr 0.012 at a total batch of 16.
_base_ = './rs-faster-rcnn_r50_fpn_4xb4-12e_coco.py'

model = dict(
    backbone=dict(
        depth=101,
        dcn=dict(type='DCNv2', deform_groups=4, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True),
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet101')))

train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomChoiceResize', scales=[(1333, short) for short in range(480, 961, 80)], keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33], gamma=0.1)
]
