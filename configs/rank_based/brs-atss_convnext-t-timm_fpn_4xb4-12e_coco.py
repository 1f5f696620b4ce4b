# BRS-ATSS with timm's ConvNeXt-T (ImageNet-1k, 224) backbone, 12 epochs on COCO, 4 GPUs x 4 images (total batch
# 16). BRS-ATSS R50 settings with the backbone swapped and AdamW (lr 2e-4, weight decay 0.05) as mmdet's ConvNeXt-T
# detectors (without their layer-wise lr decay, whose optimiser constructor expects mmpretrain's ConvNeXt
# parameter names). Not in the paper: no published result.
# The backbone weights are timm's ConvNeXt-T, ImageNet-1k (convnext_tiny.fb_in1k), from
#   https://huggingface.co/timm/convnext_tiny.fb_in1k/resolve/main/model.safetensors
# saved as checkpoints/convnext_tiny.fb_in1k.safetensors (relative to the directory you train from); see
# docs/timm_backbones.md. Needs timm (installed by tools/install.sh).
_base_ = './brs-atss_r50_fpn_4xb4-12e_coco.py'

pretrained = 'checkpoints/convnext_tiny.fb_in1k.safetensors'
model = dict(
    backbone=dict(
        _delete_=True,
        type='TimmBackbone',
        model_name='convnext_tiny.fb_in1k',  # timm's architecture.pretrained-tag
        out_indices=(0, 1, 2, 3),  # strides 4-32; the FPN starts at stride 8 (start_level=1) as for ResNet-50
        frozen_stages=-1,
        drop_path_rate=0.2,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    # channels of convnext_tiny's features 0-3:
    # brs_detr.models.backbones.timm_feature_info('convnext_tiny', (0, 1, 2, 3))
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, betas=(0.9, 0.999), weight_decay=0.05))
