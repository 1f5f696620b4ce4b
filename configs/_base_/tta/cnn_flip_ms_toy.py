# Test-time augmentation of the CNN baselines on the toy set (tools/test.py --tta), 128x128 images: 3 scales x
# horizontal flip, merged by class-wise NMS (mmdet's DetTTAModel).
_base_ = './tta_steps.py'
tta_model = dict(type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.6), max_per_img=100))
tta_scales = [(128, 128), (96, 96), (160, 160)]
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug',
         transforms=[[dict(type='Resize', scale=scale, keep_ratio=True) for scale in tta_scales],
                     {{_base_.tta_flips}}, {{_base_.tta_annotations}}, {{_base_.tta_pack}}])
]
