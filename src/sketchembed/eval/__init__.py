"""Evaluation of a representation space: KNN, linear probe, t-SNE, plots, reports, suggestions.

Submodules are imported explicitly (``from sketchembed.eval.knn import …``) so that the CLI and the
training callbacks only pay for what they use (matplotlib / openTSNE load slowly).
"""
