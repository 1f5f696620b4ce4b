"""Errors of the export: reported by the tools as one line (exit status 2)."""
from brs_detr.apis.cli import ToolInputError


class UnsupportedExportError(ToolInputError):
    """The model (or one of its modules or settings) has no ONNX export here; the message names it."""
