# BRS-DETR Swin-L (ImageNet-22k, 384), 12 epochs on COCO, 8 GPUs x 2 images (total batch 16).
# BRS-DETR R50 settings with the Swin-L backbone of Co-Deformable-DETR Swin-L (published: 57.2 box AP).
_base_ = './brs-detr_r50_4xb4-12e_coco.py'

pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_large_patch4_window12_384_22k.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        pretrain_img_size=384,
        embed_dims=192,
        depths=[2, 2, 18, 2],
        num_heads=[6, 12, 24, 48],
        window_size=12,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.3,
        patch_norm=True,
        out_indices=(1, 2, 3),
        with_cp=False,
        convert_weights=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[384, 768, 1536]))

train_dataloader = dict(batch_size=2, num_workers=2)
optim_wrapper = dict(optimizer=dict(weight_decay=0.05))
