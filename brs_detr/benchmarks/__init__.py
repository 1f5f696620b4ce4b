"""Benchmarks measured by tools that print tables: the ranking losses on the BRS paper's synthetic grid
(:mod:`~brs_detr.benchmarks.loss`, ``tools/benchmark_loss.py``), training iterations of whole detectors
(:mod:`~brs_detr.benchmarks.train`, ``tools/benchmark_train.py``), what ranking across processes costs
(:mod:`~brs_detr.benchmarks.global_ranking`, ``tools/benchmark_global_ranking.py``), the timing of inference in
PyTorch and ONNX Runtime (:mod:`~brs_detr.benchmarks.inference`, ``tools/analysis_tools/benchmark.py``) and the
tools' start time (:mod:`~brs_detr.benchmarks.tool_start`, ``tools/benchmark_tool_start.py``).
"""
