# BRS-DETR ResNet-50 fine-tuned on your own data set in COCO format (docs/custom_dataset.md): 1 GPU x 2 images, 24
# epochs, starting from the COCO model-zoo checkpoint. Deltas with respect to brs-detr_r50_4xb4-12e_coco.py:
# * the data: your annotation files and images, and your classes, listed once in metainfo: every head
#   (num_classes='from_dataset': query head, RoI head, ATSS head) takes their number from there;
# * load_from the COCO checkpoint (python tools/download_checkpoint.py brs-detr_r50_12e_coco): every weight that fits
#   is loaded, the class layers of the heads (80 classes there) keep their initialisation (listed in the log);
# * 24 epochs with one lr step at 20, lr 1e-4 for a total batch of 2 (the recipe of docs/custom_dataset.md, which
#   also says what was measured and what was not), the best checkpoint by validation mAP kept;
# * per-class AP in every validation (classwise=True).
_base_ = '../brs_detr/brs-detr_r50_4xb4-12e_coco.py'

data_root = 'data/custom/'
metainfo = dict(classes=('cat', 'dog', 'bird'))  # your class names, in the order of the annotation file

train_dataloader = dict(
    batch_size=2,
    num_workers=2,
    dataset=dict(
        data_root=data_root, metainfo=metainfo, ann_file='annotations/train.json', data_prefix=dict(img='images/')))
val_dataloader = dict(
    dataset=dict(
        data_root=data_root, metainfo=metainfo, ann_file='annotations/val.json', data_prefix=dict(img='images/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json', classwise=True)
test_evaluator = val_evaluator

load_from = 'checkpoints/brs-detr_r50_12e_coco.pth'
max_epochs = 24
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[20], gamma=0.1)]
optim_wrapper = dict(optimizer=dict(lr=1e-4))
auto_scale_lr = dict(base_batch_size=2)
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=2, save_best='coco/bbox_mAP'))
