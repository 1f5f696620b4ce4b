# The custom-data walkthrough of docs/custom_dataset.md, step 1 (a stand-in for a model-zoo checkpoint trained on
# other data): the tiny BRS-DETR trained on a toy data set with 5 classes in YOLO format, converted to COCO JSON:
#   python tools/make_toy_coco.py data/toy_yolo --annotation-format yolo --classes red_rectangle green_ellipse \
#       blue_triangle yellow_rectangle magenta_ellipse
#   python tools/dataset_converters/yolo2coco.py data/toy_yolo
#   python tools/train.py configs/custom/brs-detr_r18-tiny_1xb2-2e_toy-yolo.py
# Only the data set changes with respect to the toy COCO config: its classes are listed once, in metainfo, and every
# head of the model (query head, RoI head, ATSS head: num_classes='from_dataset') takes their number from there.
_base_ = '../brs_detr/brs-detr_r18-tiny_1xb2-1e_toy-coco.py'

data_root = 'data/toy_yolo/'
metainfo = dict(
    classes=('red_rectangle', 'green_ellipse', 'blue_triangle', 'yellow_rectangle', 'magenta_ellipse'),
    palette=[(230, 40, 40), (40, 210, 40), (30, 60, 230), (230, 220, 20), (220, 40, 220)])

train_dataloader = dict(
    dataset=dict(
        data_root=data_root, metainfo=metainfo, ann_file='annotations/train.json', data_prefix=dict(img='')))
val_dataloader = dict(
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/val.json', data_prefix=dict(img='')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/val.json')
test_evaluator = val_evaluator

# a few iterations at a higher lr: enough for boxes that land on the objects
optim_wrapper = dict(optimizer=dict(lr=5e-4))
train_cfg = dict(max_epochs=2, val_interval=2)
param_scheduler = [dict(type='MultiStepLR', begin=0, end=2, by_epoch=True, milestones=[2], gamma=0.2)]
randomness = dict(seed=0)  # the same checkpoint in every run
