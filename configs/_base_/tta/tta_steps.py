# Steps shared by the test-time augmentation pipelines of configs/_base_/tta/ (used as {{_base_.tta_...}}):
# both horizontal flips, the ground truth for evaluation and the meta keys DetTTAModel needs to undo the flip.
tta_flips = [dict(type='RandomFlip', prob=1.), dict(type='RandomFlip', prob=0.)]
tta_annotations = [dict(type='LoadAnnotations', with_bbox=True)]
tta_pack = [
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip', 'flip_direction'))
]
