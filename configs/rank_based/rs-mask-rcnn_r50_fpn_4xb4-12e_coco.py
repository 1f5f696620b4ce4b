# RS-Mask R-CNN (Rank & Sort loss), the instance-segmentation baseline of the BRS paper (Table 2; 36.3 mask AP
# reported). RS-Faster R-CNN (rs-faster-rcnn_r50_fpn_4xb4-12e_coco.py: ranking losses in the RPN and the RoI box
# head, no sampling, score_thr 0.40, lr 0.012 at batch 16) plus mmdet's mask branch with:
# * RankBasedStandardRoIHead: hands the RoI ranking loss and the positives' box weights to the mask head and
#   keeps at most 200 positives (a random subset) for the mask loss, as released;
# * RankBasedFCNMaskHead: 1 - Dice per instance instead of per-pixel cross-entropy, score-weighted and
#   value-matched to the RoI ranking loss (its weight must stay 1);
# * the R-CNN assigner matches low-quality proposals (match_low_quality=True), as the released config, which
#   starts from mmdet's Mask R-CNN base (the Faster R-CNN base has False).
_base_ = './rs-faster-rcnn_r50_fpn_4xb4-12e_coco.py'

model = dict(
    type='MaskRCNN',
    data_preprocessor=dict(pad_mask=True),
    roi_head=dict(
        type='RankBasedStandardRoIHead',
        max_masks_per_batch=200,
        mask_roi_extractor=dict(
            type='SingleRoIExtractor',
            roi_layer=dict(type='RoIAlign', output_size=14, sampling_ratio=0),
            out_channels=256,
            featmap_strides=[4, 8, 16, 32]),
        mask_head=dict(
            type='RankBasedFCNMaskHead',
            num_convs=4,
            in_channels=256,
            conv_out_channels=256,
            num_classes='from_dataset',
            # mmdet's DiceLoss adds eps to both sums: 2 x 5e-6 = the released 1e-5
            loss_mask=dict(
                type='DiceLoss', use_sigmoid=True, activate=True, naive_dice=False, eps=5e-6,
                loss_weight=1.0))),
    train_cfg=dict(rcnn=dict(assigner=dict(match_low_quality=True), mask_size=28)),
    test_cfg=dict(rcnn=dict(mask_thr_binary=0.5)))

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(metric=['bbox', 'segm'])
test_evaluator = val_evaluator
