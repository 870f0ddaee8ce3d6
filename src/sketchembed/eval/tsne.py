"""2-D t-SNE map of embeddings (openTSNE), usable on anything from a handful to 10^5 drawings.

openTSNE requires perplexity < n/3; small evaluation sets (the real data here has ~30 drawings per
class) get a perplexity scaled down to fit instead of an error.
"""

from __future__ import annotations

import numpy as np
from openTSNE import TSNE


def adapted_perplexity(n: int, perplexity: float = 30.0) -> float:
    return float(max(1.0, min(perplexity, (n - 1) / 3.0)))


def tsne_map(emb, *, perplexity: float = 30.0, seed: int = 0, n_jobs: int = 1,
             n_iter: int = 500, max_points: int | None = 20000) -> np.ndarray:
    """``(n, d)`` embeddings → ``(n, 2)`` map. Tiny inputs (n < 5) get a PCA layout instead.

    ``max_points`` guards against accidental hour-long runs; subsample before calling for more.
    """
    x = np.asarray(emb, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"t-SNE needs (n, d) embeddings, got {x.shape}")
    n = len(x)
    if max_points is not None and n > max_points:
        raise ValueError(f"t-SNE of {n} points requested (max_points={max_points}); subsample first")
    if n < 5:
        xc = x - x.mean(0)
        if n < 2 or not np.any(xc):
            return np.zeros((n, 2), np.float32)
        u, s, _ = np.linalg.svd(xc, full_matrices=False)
        out = np.zeros((n, 2), np.float32)
        m = min(2, u.shape[1])
        out[:, :m] = u[:, :m] * s[:m]
        return out
    tsne = TSNE(n_components=2, perplexity=adapted_perplexity(n, perplexity), random_state=seed,
                n_jobs=n_jobs, initialization="pca", n_iter=n_iter, verbose=False)
    return np.asarray(tsne.fit(x), dtype=np.float32)
