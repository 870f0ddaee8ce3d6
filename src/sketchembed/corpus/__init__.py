"""The offline corpus: format readers, the dataset's simplification, download, prepared datasets.

Files in, a prepared dataset out (``sketchembed data prepare``); nothing here knows about batches,
models or training (the online pipeline, :mod:`sketchembed.data`, builds on it).
"""
