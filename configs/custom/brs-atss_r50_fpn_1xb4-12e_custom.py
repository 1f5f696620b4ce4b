# BRS-ATSS ResNet-50 (a rank-based CNN baseline) fine-tuned on your own data set in COCO format
# (docs/custom_dataset.md): 1 GPU x 4 images, 12 epochs, starting from the COCO model-zoo checkpoint. Deltas with
# respect to configs/rank_based/brs-atss_r50_fpn_4xb4-12e_coco.py:
# * the data and the classes, listed once in metainfo: the head (num_classes='from_dataset') follows;
# * load_from the COCO checkpoint (python tools/download_checkpoint.py brs-atss_r50_fpn_12e_coco): its 80-class
#   classifier keeps the model's initialisation (prior bias), every other weight is loaded;
# * SGD lr 0.002 for a total batch of 4 (0.008 at 16, scaled linearly), the best checkpoint by validation mAP kept;
# * per-class AP in every validation (classwise=True).
_base_ = '../rank_based/brs-atss_r50_fpn_4xb4-12e_coco.py'

data_root = 'data/custom/'
metainfo = dict(classes=('cat', 'dog', 'bird'))  # your class names, in the order of the annotation file

train_dataloader = dict(
    batch_size=4,
    dataset=dict(
        data_root=data_root, metainfo=metainfo, ann_file='annotations/train.json', data_prefix=dict(img='images/')))
val_dataloader = dict(
    dataset=dict(
        data_root=data_root, metainfo=metainfo, ann_file='annotations/val.json', data_prefix=dict(img='images/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json', classwise=True)
test_evaluator = val_evaluator

load_from = 'checkpoints/brs-atss_r50_fpn_12e_coco.pth'
optim_wrapper = dict(optimizer=dict(lr=0.002))
auto_scale_lr = dict(base_batch_size=4)
default_hooks = dict(checkpoint=dict(interval=1, max_keep_ckpts=2, save_best='coco/bbox_mAP'))
