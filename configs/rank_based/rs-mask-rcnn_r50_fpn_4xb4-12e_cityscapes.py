# RS-Mask R-CNN (Rank & Sort loss) on Cityscapes, the driving-scene run of the BRS paper (Table 3: 43.5 AP for RS,
# 0.43 s/iter). Settings of the authors' ranksort_mask_rcnn_r50_fpn_1x_cityscapes.py:
# * model: _base_/models/rs-mask-rcnn_r50_fpn.py with the 8 Cityscapes instance classes;
# * initialised from mmdet's COCO Mask R-CNN R50-FPN 1x (38.2 box / 34.7 mask AP), as mmdet's Cityscapes Mask R-CNN
#   is: its 80-class classifier, box regressor and mask logits do not fit the 8-class heads, so load_from keeps
#   them at the model's initialisation and logs each (class-dependent weights, docs/custom_dataset.md), everything
#   else is loaded;
# * data: mmdet's Cityscapes instance base (each epoch repeats the training set 8 times, shorter side drawn from
#   [800, 1024], long side <= 2048; test at 2048x1024; COCO-style and Cityscapes metrics, the latter needs
#   `pip install cityscapesscripts`), 4 images per GPU;
# * 12 such epochs, lr x 0.1 after epoch 8 (500-iteration linear warm-up), SGD lr 0.012 at a total batch of 16.
_base_ = [
    '../_base_/models/rs-mask-rcnn_r50_fpn.py', 'mmdet::_base_/datasets/cityscapes_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py', 'mmdet::_base_/default_runtime.py'
]

model = dict(backbone=dict(init_cfg=None))  # the heads take the 8 classes from CityscapesDataset's metainfo
load_from = 'https://download.openmmlab.com/mmdetection/v2.0/mask_rcnn/mask_rcnn_r50_fpn_1x_coco/mask_rcnn_r50_fpn_1x_coco_20200205-d4b0c5d6.pth'  # noqa: E501

train_dataloader = dict(batch_size=4, num_workers=4)
optim_wrapper = dict(optimizer=dict(lr=0.012))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=12, by_epoch=True, milestones=[8], gamma=0.1)
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
