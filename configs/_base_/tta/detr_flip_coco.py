# Test-time augmentation of BRS-DETR / Co-Deformable-DETR on COCO (tools/test.py --tta): the test scale and its
# horizontal flip, merged by weighted box fusion (WBFDetTTAModel: a set-prediction detector returns one box per
# object and view; fusion averages them where NMS would keep one). docs/deployment.md has the toy-set measurements.
_base_ = './tta_steps.py'
tta_model = dict(type='WBFDetTTAModel', tta_cfg=dict(iou_thr=0.55, max_per_img=100))
tta_scales = [(1333, 800)]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug',
         transforms=[[dict(type='Resize', scale=scale, keep_ratio=True) for scale in tta_scales],
                     {{_base_.tta_flips}}, {{_base_.tta_annotations}}, {{_base_.tta_pack}}])
]
