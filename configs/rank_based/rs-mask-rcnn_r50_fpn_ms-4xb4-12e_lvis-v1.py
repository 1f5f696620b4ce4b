# RS-Mask R-CNN (Rank & Sort loss) on LVIS v1, the long-tailed run of the BRS paper (Table 3: 25.6 AP for RS,
# 0.87 s/iter). The RS authors publish a checkpoint (RankSortLoss README, ranksort_mask_rcnn_r50_fpn_1x_lvis_v1.py:
# 25.2 mask AP, 25.9 box AP). Settings of that config:
# * model: _base_/models/rs-mask-rcnn_r50_fpn.py with the 1203 LVIS v1 classes, from torchvision's ImageNet R50;
#   test score threshold 0.60 (released setting, for faster inference), up to 300 detections per image (LVIS);
# * data: mmdet's LVIS v1 instance base: repeat-factor sampling with threshold 1e-3 (ClassBalancedDataset),
#   shorter side picked among 640, 672, ..., 800 (long side <= 1333), test at 1333x800, LVISMetric; 4 images per GPU.
#   Reading LVIS annotations and evaluating need the LVIS API (`pip install
#   git+https://github.com/lvis-dataset/lvis-api.git`; the PyPI release 0.5.3 still calls `np.float` in its
#   evaluation, which numpy >= 1.24 removed); building and training the model do not;
# * 12 epochs, lr x 0.1 after epochs 8 and 11 (500-iteration linear warm-up), SGD lr 0.012 at a total batch of 16.
_base_ = [
    '../_base_/models/rs-mask-rcnn_r50_fpn.py', 'mmdet::_base_/datasets/lvis_v1_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py', 'mmdet::_base_/default_runtime.py'
]

model = dict(  # the heads take the 1203 classes from LVISV1Dataset's metainfo
    test_cfg=dict(rcnn=dict(score_thr=0.60, max_per_img=300)))

train_dataloader = dict(batch_size=4, num_workers=4)
optim_wrapper = dict(optimizer=dict(lr=0.012))
auto_scale_lr = dict(enable=False, base_batch_size=16)
