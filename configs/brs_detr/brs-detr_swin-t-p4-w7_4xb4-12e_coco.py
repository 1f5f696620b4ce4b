# BRS-DETR Swin-T (ImageNet-1k, 224), 12 epochs on COCO, 4 GPUs x 4 images (total batch 16).
# BRS-DETR R50 settings with the Swin-T backbone of Co-Deformable-DETR Swin-T (published: 52.3 box AP).
_base_ = './brs-detr_r50_4xb4-12e_coco.py'

pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_tiny_patch4_window7_224.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        pretrain_img_size=224,
        embed_dims=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(1, 2, 3),
        with_cp=False,
        convert_weights=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768]))

optim_wrapper = dict(optimizer=dict(weight_decay=0.05))
