"""Models of brs-detr, registered in mmdet's registries on import."""
from .losses import *  # noqa: F401,F403
