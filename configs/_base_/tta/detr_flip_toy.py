# Test-time augmentation of BRS-DETR / Co-Deformable-DETR on the toy set (tools/test.py --tta), 128x128 images: the
# test scale and its horizontal flip, merged by weighted box fusion (WBFDetTTAModel: a set-prediction detector
# returns one box per object and view; fusion averages them where NMS would keep one). docs/deployment.md has the
# toy-set measurements.
tta_model = dict(type='WBFDetTTAModel', tta_cfg=dict(iou_thr=0.55, max_per_img=100))
tta_scales = [(128, 128)]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(
        type='TestTimeAug',
        transforms=[
            [dict(type='Resize', scale=scale, keep_ratio=True) for scale in tta_scales],
            [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)],
            [dict(type='LoadAnnotations', with_bbox=True)],
            [dict(type='PackDetInputs',
                  meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                             'flip_direction'))],
        ])
]
