"""Data layer: format readers, simplification, prepared datasets, rasterizer, DataModule."""
