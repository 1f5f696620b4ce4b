"""Warnings of the third-party stack that are known, harmless and not ours to fix; the tools do not print them.

Each entry is a warning filter in pytest's ``filterwarnings`` syntax (``action:message:category:module``: the start
of the message, a regular expression, and the module the warning is attributed to). ``pyproject.toml`` lists the
same entries for the test suite, after making any warning raised from brs_detr an error
(``tests/test_tool_start.py`` checks that the two lists agree). :func:`ignore_known_warnings` applies them in a tool's
process, unless the user chose warning filters (``python -W``, ``PYTHONWARNINGS``).
"""
import builtins
import sys
import warnings

KNOWN_WARNINGS = (
    # setuptools >= 80 warns on `import pkg_resources` (mmengine.utils.package_utils, and timm through importlib)
    'ignore:pkg_resources is deprecated as an API:UserWarning:importlib',
    'ignore:pkg_resources is deprecated as an API:UserWarning:mmengine.utils.package_utils',
    # torch >= 2.10 deprecates TorchScript, which mmcv and mmdet use when they are imported
    'ignore:`torch.jit.script` is deprecated:DeprecationWarning:torch.jit._script',
    'ignore:`torch.jit.interface` is deprecated:DeprecationWarning:torch.jit._script',
    # mmdet's Deformable-DETR (reference points, proposals) and timm call torch.meshgrid without indexing=
    'ignore:torch.meshgrid. in an upcoming release, it will be required to pass the indexing:UserWarning:'
    'torch.functional',
    # mmdet's ATSSHead/PAAHead build their layers with the deprecated AnchorHead.num_anchors
    'ignore:DeprecationWarning. .num_anchors. is deprecated:UserWarning:mmdet.models.dense_heads.anchor_head',
    # mmdet's Swin backbone logs with Logger.warn
    "ignore:The 'warn' method is deprecated, use 'warning' instead:DeprecationWarning:mmdet.models.backbones.swin",
    # pycocotools 2.0 under numpy 2 (RLE encoding and decoding of masks)
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:pycocotools.mask",
    # mmengine's visualizer on boxes / polygons that leave the image (predictions of an untrained model)
    'ignore:Warning. The bbox is out of bounds:UserWarning:mmengine.visualization.visualizer',
    'ignore:Warning. The polygon is out of bounds:UserWarning:mmengine.visualization.visualizer',
    # several Runners in one process each ask for the visualizer instance named by the config, and for the logger
    # named by the config and the start time (two Runners of one config started within the same second)
    'ignore:.* instance named of .* has been created:UserWarning:mmengine.utils.manager',
    # distributed runs: mmengine sets OMP/MKL_NUM_THREADS=1 when unset and says so
    'ignore:Setting (OMP|MKL)_NUM_THREADS environment variable for each process:UserWarning:'
    'mmengine.utils.dl_utils.setup_env',
    # torch 2.13's DistributedDataParallel deprecates broadcast_buffers, which mmengine's wrapper passes (False)
    'ignore:`broadcast_buffers` is deprecated:FutureWarning:mmengine.model.wrappers.distributed',
    # torch >= 2.9 deprecates its TorchScript ONNX exporter, which the export uses on purpose (docs/deployment.md:
    # mmdet's code traces, the dynamo exporter cannot capture it); torch attributes the warning to its caller
    'ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning:brs_detr.deployment.exporter',
    # ... whose own code calls a function torch deprecated, and notes slices it cannot constant-fold (the graph is
    # checked against PyTorch after every export)
    'ignore:The feature will be removed. Please remove usage of this function:DeprecationWarning:'
    'torch.onnx._internal.torchscript_exporter.utils',
    'ignore:Constant folding - Only steps=1 can be constant folded:UserWarning:'
    'torch.onnx._internal.torchscript_exporter',
    # numpy 2 on a torch tensor passed to a numpy function (mmengine's visualizer draws with tensors)
    'ignore:__array_wrap__ must accept context and return_scalar arguments:DeprecationWarning:'
    'numpy._core.fromnumeric',
    # mmdet's FCNMaskHead copies already activated masks with new_tensor (Cascade Mask R-CNN's merged stages)
    'ignore:To copy construct from a tensor, it is recommended to use:UserWarning:'
    'mmdet.models.roi_heads.mask_heads.fcn_mask_head',
)


def ignore_known_warnings() -> None:
    """Ignore the :data:`KNOWN_WARNINGS` in this process, unless ``-W`` / ``PYTHONWARNINGS`` set filters."""
    if sys.warnoptions:
        return
    for entry in KNOWN_WARNINGS:
        action, message, category, module = entry.split(':')
        warnings.filterwarnings(action, message, getattr(builtins, category), module)
