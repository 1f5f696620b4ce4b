"""Task modules of brs-detr (assigners), registered in mmdet's TASK_UTILS."""
from .assigners import *  # noqa: F401,F403
