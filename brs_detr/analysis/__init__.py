"""The logic of the analysis tools (``tools/analysis_tools/``): reading and plotting training logs
(:mod:`~brs_detr.analysis.logs`, ``analyze_logs.py``).
"""
