"""Models of brs-detr, registered in mmdet's registries on import."""
from .losses import *  # noqa: F401,F403
from .layers import *  # noqa: F401,F403
from .task_modules import *  # noqa: F401,F403
from .backbones import *  # noqa: F401,F403
from .dense_heads import *  # noqa: F401,F403
from .roi_heads import *  # noqa: F401,F403
from .detectors import *  # noqa: F401,F403
from .test_time_augs import *  # noqa: F401,F403
