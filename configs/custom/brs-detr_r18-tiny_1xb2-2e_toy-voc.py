# The custom-data walkthrough of docs/custom_dataset.md, step 2: fine-tune the tiny BRS-DETR of step 1 (5 classes,
# configs/custom/brs-detr_r18-tiny_1xb2-2e_toy-yolo.py) on a toy data set with 3 other classes in Pascal VOC format:
#   python tools/make_toy_coco.py data/toy_voc --annotation-format voc --format jpg --classes red_box green_disc \
#       blue_wedge --seed 1
#   python tools/dataset_converters/voc2coco.py data/toy_voc --classes red_box green_disc blue_wedge
#   python tools/train.py configs/custom/brs-detr_r18-tiny_1xb2-2e_toy-voc.py
# The classes are listed once, in metainfo; every head follows. load_from loads every weight of step 1's checkpoint
# that fits; the class layers of the heads (5 classes there, 3 here) keep their initialisation, and the log lists
# them.
_base_ = '../brs_detr/brs-detr_r18-tiny_1xb2-1e_toy-coco.py'

data_root = 'data/toy_voc/'
metainfo = dict(classes=('red_box', 'green_disc', 'blue_wedge'), palette=[(230, 40, 40), (40, 210, 40), (30, 60, 230)])

train_dataloader = dict(
    dataset=dict(
        data_root=data_root, metainfo=metainfo, ann_file='annotations/voc07_train.json', data_prefix=dict(img='')))
val_dataloader = dict(
    dataset=dict(
        data_root=data_root, metainfo=metainfo, ann_file='annotations/voc07_val.json', data_prefix=dict(img='')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/voc07_val.json', classwise=True)
test_evaluator = val_evaluator

load_from = 'work_dirs/brs-detr_r18-tiny_1xb2-2e_toy-yolo/epoch_2.pth'
optim_wrapper = dict(optimizer=dict(lr=5e-4))
train_cfg = dict(max_epochs=2, val_interval=2)
param_scheduler = [dict(type='MultiStepLR', begin=0, end=2, by_epoch=True, milestones=[2], gamma=0.2)]
randomness = dict(seed=0)  # the same checkpoint in every run
