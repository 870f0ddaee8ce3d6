"""KNN classification in the embedding space and a saved nearest-neighbour index.

The study reports KNN accuracy (K=3 for the combined model, K=4 for the triplet CNNs) with the train
embeddings as the index; one neighbour search with the largest K serves every K. Two vote rules:

* strict (``vote``, metrics ``knn@K``): majority; ties go to the tied class with the nearest member —
  deterministic, and the choice a person would make looking at the neighbours.
* the study's (``study_tie_correct``, metrics ``knn@K_study_tie``): its notebook counts a tied vote
  (1-1-1 at K=3) as correct when the true class is among the tied classes — optimistic, an upper
  bound of the strict rule.

The search is exact brute force (squared euclidean distance, as the study's notebook), one block of
the index at a time merged into a running top-k, so memory stays bounded at any index size: each
block searched by faiss' ``IndexFlatL2`` when faiss is installed (the faster in `make bench`'s
eval-at-scale section), else by torch matmul — on the CPU, or on a GPU with ``device`` (eval's
``knn.device``), where one block of distances is a single matrix product.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from sketchembed.corpus.formats.registry import unprintable
from sketchembed.corpus.sketch import CANVAS_MAX
from sketchembed.corpus.store import load_plain_npy, own_files_problem, read_manifest

try:
    import faiss
except ImportError:  # optional: the torch search gives the same neighbours
    faiss = None

BACKENDS = ("auto", "faiss", "torch", "sklearn")
# K of the vote that classifies drawings for models without a classifier head (the study's choice
# for triplet embeddings): eval's predictions and the studio's guesses.
KNN_CLASSIFIER_K = 4
INDEX_FORMAT = "sketchembed-knn-index"
INDEX_VERSION = 1
#: What an index folder holds (``index.json`` and the arrays, some optional): an earlier index is
#: overwritten only when it holds nothing else, and only as regular files.
INDEX_FILES = frozenset({"index.json", *(f"{name}.npy" for name in
                                         ("embeddings", "labels", "key_ids", "indices", "points", "offsets"))})


def _check_pair(emb: np.ndarray, labels: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    emb = np.asarray(emb)
    if emb.dtype not in (np.float32, np.float16):
        emb = emb.astype(np.float32)
    labels = np.asarray(labels).astype(np.int64, copy=False)
    if emb.ndim != 2:
        raise ValueError(f"{what} embeddings must be (n, d), got shape {emb.shape}")
    if len(labels) != len(emb):
        raise ValueError(f"{what}: {len(emb)} embeddings but {len(labels)} labels")
    for a in range(0, len(emb), 1 << 16):  # blockwise: no full-size temporary on a large index
        if not np.all(np.isfinite(emb[a:a + (1 << 16)])):
            raise ValueError(f"{what} embeddings contain NaN/inf")
    return emb, labels


def vote_scores(neighbor_labels: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """(n, n_classes) vote scores of the first ``k`` columns of (n, >=k) neighbour labels (nearest
    first): ``count * (k + 1) - rank of the class's nearest member`` (``k`` when absent), so more
    votes win and, among equal counts, the class whose member is nearest ranks first."""
    lab = np.asarray(neighbor_labels)[:, :k]
    n = len(lab)
    k = lab.shape[1]
    rows = np.repeat(np.arange(n), k)
    counts = np.zeros((n, n_classes), dtype=np.int32)
    np.add.at(counts, (rows, lab.ravel()), 1)
    first_rank = np.full((n, n_classes), k, dtype=np.int32)
    for j in range(k - 1, -1, -1):  # smaller ranks written last win
        first_rank[np.arange(n), lab[:, j]] = j
    return counts * (k + 1) - first_rank


def vote(neighbor_labels: np.ndarray, k: int, n_classes: int) -> np.ndarray:
    """Majority class among the first ``k`` columns of (n, >=k) neighbour labels (nearest first);
    ties go to the class of the nearest neighbour (see :func:`vote_scores`)."""
    return vote_scores(neighbor_labels, k, n_classes).argmax(axis=1)


def resolve_backend(backend: str = "auto", device="cpu") -> str:
    """``auto`` = torch when the search runs on a GPU (``device``), else faiss when installed (faster
    in ``make bench``'s eval-at-scale section), else torch. Only torch searches off the CPU."""
    if backend not in BACKENDS:
        raise ValueError(f"knn.backend={backend!r}: choose from {', '.join(BACKENDS)}")
    on_cpu = torch.device(device).type == "cpu"
    if backend == "auto":
        return "faiss" if faiss is not None and on_cpu else "torch"
    if backend == "faiss" and faiss is None:
        raise ValueError("knn.backend=faiss: faiss is not installed (pip install faiss-cpu), or use torch")
    if not on_cpu and backend != "torch":
        raise ValueError(f"knn.device={device}: only knn.backend=torch (or auto) searches off the CPU, "
                         f"not {backend}")
    return backend


def _torch_block(block: np.ndarray, device="cpu"):
    t = torch.from_numpy(block).to(device)
    tn = t.square().sum(1)

    def run(q: np.ndarray, k: int):
        qt = torch.from_numpy(q).to(device)
        d2 = torch.addmm(qt.square().sum(1, keepdim=True) + tn[None, :], qt, t.T, alpha=-2.0).clamp_(min=0)
        d, i = torch.topk(d2, k, dim=1, largest=False, sorted=True)
        return d.cpu().numpy(), i.cpu().numpy()
    return run


def _faiss_block(block: np.ndarray):
    flat = faiss.IndexFlatL2(int(block.shape[1]))
    flat.add(block)
    return lambda q, k: flat.search(q, k)


def search(index, queries, k: int, *, backend: str = "auto", query_block: int = 2048,
           index_block: int = 131072, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest index rows of each query, nearest first: ``(idx (q, k) int64, d2 (q, k))``
    with squared euclidean distances (ties: the lower index row first).

    Blockwise: one float32 copy of ``index_block`` index rows at a time (``index``/``queries`` may
    be float16 or memory-mapped), searched by every query block, merged into a running top-k —
    so memory stays the inputs plus one block, at 1.4 M indexed drawings too. ``device``: where the
    torch backend computes (the block and one query block of distances live there).
    """
    backend = resolve_backend(backend, device)
    k = int(k)
    if k < 1 or k > len(index):
        raise ValueError(f"K={k} needs 1 <= K <= {len(index)} indexed embeddings")
    nq = len(queries)
    if backend == "sklearn":
        nn = NearestNeighbors(n_neighbors=k, metric="euclidean", n_jobs=1).fit(np.asarray(index, np.float32))
        d, i = nn.kneighbors(np.asarray(queries, np.float32)) if nq else (np.zeros((0, k)), np.zeros((0, k), int))
        return i.astype(np.int64), np.square(d).astype(np.float32)
    best_d = np.full((nq, k), np.inf, np.float32)
    best_i = np.full((nq, k), -1, np.int64)
    for a in range(0, len(index), int(index_block)):
        block = np.ascontiguousarray(index[a:a + int(index_block)], dtype=np.float32)
        run = _faiss_block(block) if backend == "faiss" else _torch_block(block, device)
        kk = min(k, len(block))
        for q0 in range(0, nq, int(query_block)):
            q = np.ascontiguousarray(queries[q0:q0 + int(query_block)], dtype=np.float32)
            d, i = run(q, kk)
            d = np.concatenate([best_d[q0:q0 + len(q)], d], 1)
            i = np.concatenate([best_i[q0:q0 + len(q)], i.astype(np.int64) + a], 1)
            order = np.argsort(d, axis=1, kind="stable")[:, :k]
            best_d[q0:q0 + len(q)] = np.take_along_axis(d, order, 1)
            best_i[q0:q0 + len(q)] = np.take_along_axis(i, order, 1)
        del run, block
    return best_i, best_d


def study_tie_correct(neighbor_labels: np.ndarray, k: int, true_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """The study notebook's rule: correct when the true class has the most votes among the first
    ``k`` neighbours, *including* a tie for the most (1-1-1 at K=3 counts if the true class is one)."""
    lab = np.asarray(neighbor_labels)[:, :k]
    y = np.asarray(true_labels).astype(np.int64)
    counts = np.zeros((len(lab), n_classes), dtype=np.int32)
    np.add.at(counts, (np.repeat(np.arange(len(lab)), k), lab.ravel()), 1)
    return counts[np.arange(len(lab)), y] == counts.max(axis=1)


def nearest(train_emb, train_labels, query_emb, k: int, *, exclude_self: bool = False, backend: str = "auto",
            query_block: int = 2048, device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """``(idx (q, k), d2 (q, k))``: each query's ``k`` nearest index rows, nearest first, after the
    inputs are checked (``device``: see :func:`search`).

    ``exclude_self`` drops each query's own row when the query set *is* the index (leave-one-out).
    """
    train_emb, train_labels = _check_pair(train_emb, train_labels, "index")
    query_emb = np.asarray(query_emb)
    kmax = int(k) + (1 if exclude_self else 0)
    if kmax > len(train_emb):
        raise ValueError(f"K={k} needs at least {kmax} indexed embeddings, have {len(train_emb)}")
    if query_emb.ndim != 2 or query_emb.shape[1] != train_emb.shape[1]:
        raise ValueError(f"query embeddings {query_emb.shape} do not match index dimension {train_emb.shape[1]}")
    idx, d2 = search(train_emb, query_emb, kmax, backend=backend, query_block=query_block, device=device)
    if exclude_self:
        own = np.arange(len(query_emb))[:, None]
        keep = idx != own
        # a duplicate point may displace the own row from column 0: drop exactly one column per row
        drop = np.where(keep.all(axis=1), kmax - 1, (~keep).argmax(axis=1))
        mask = np.ones_like(idx, dtype=bool)
        mask[np.arange(len(idx)), drop] = False
        idx, d2 = idx[mask].reshape(len(idx), kmax - 1), d2[mask].reshape(len(idx), kmax - 1)
    return idx, d2


def neighbor_labels(train_emb, train_labels, query_emb, k: int, *, exclude_self: bool = False,
                    backend: str = "auto", query_block: int = 2048, device="cpu") -> np.ndarray:
    """``(q, k)`` labels of each query's ``k`` nearest index rows, nearest first (see :func:`nearest`)."""
    idx, _ = nearest(train_emb, train_labels, query_emb, k, exclude_self=exclude_self, backend=backend,
                     query_block=query_block, device=device)
    return np.asarray(train_labels).astype(np.int64, copy=False)[idx]


def knn_predict(train_emb, train_labels, query_emb, ks: Iterable[int] = (1, 3, 4, 5),
                n_classes: int | None = None, exclude_self: bool = False,
                backend: str = "auto") -> dict[int, np.ndarray]:
    """Predicted classes of ``query_emb`` for every K in ``ks`` (strict vote, euclidean distance)."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"K must be >= 1, got {ks}")
    labels = np.asarray(train_labels)
    n_classes = int(n_classes if n_classes is not None else labels.max() + 1)
    nl = neighbor_labels(train_emb, train_labels, query_emb, ks[-1], exclude_self=exclude_self, backend=backend)
    return {k: vote(nl, k, n_classes) for k in ks}


def knn_accuracy(train_emb, train_labels, test_emb, test_labels, ks: Iterable[int] = (1, 3, 4, 5),
                 n_classes: int | None = None, exclude_self: bool = False) -> dict[int, float]:
    """Accuracy of KNN classification for each K: ``{k: accuracy in [0, 1]}``."""
    test_emb, test_labels = _check_pair(test_emb, test_labels, "query")
    if len(test_labels) == 0:
        raise ValueError("no query embeddings to evaluate")
    preds = knn_predict(train_emb, train_labels, test_emb, ks, n_classes, exclude_self)
    return {k: float((p == test_labels).mean()) for k, p in preds.items()}


@dataclass
class KNNIndex:
    """Embeddings of a dataset split with what is needed to show and trust a suggestion.

    ``points``/``offsets`` (optional) keep the drawings themselves so that suggestions can be drawn
    without the dataset; ``ckpt_sha256`` ties the index to the model that made it.
    """

    embeddings: np.ndarray
    labels: np.ndarray
    key_ids: np.ndarray
    classes: list[str]
    ckpt_path: str = ""
    ckpt_sha256: str = ""
    indices: np.ndarray | None = None
    points: np.ndarray | None = None
    offsets: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.embeddings, self.labels = _check_pair(self.embeddings, self.labels, "index")
        self.key_ids = np.asarray(self.key_ids).astype(np.uint64, copy=False)
        if len(self.key_ids) != len(self.labels):
            raise ValueError(f"index: {len(self.labels)} labels but {len(self.key_ids)} key_ids")
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(self.classes)):
            raise ValueError(f"index: labels outside 0..{len(self.classes) - 1}")
        if (self.points is None) != (self.offsets is None):
            raise ValueError("index: points and offsets go together")
        if self.offsets is not None and len(self.offsets) != len(self.labels) + 1:
            raise ValueError("index: offsets must have n + 1 entries")
        self._nn = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def drawing(self, i: int) -> np.ndarray:
        """Points ``(n, 3)`` of indexed drawing ``i`` (requires an index saved with points)."""
        if self.points is None:
            raise ValueError("this index was saved without drawings")
        return np.asarray(self.points[self.offsets[i]:self.offsets[i + 1]])

    def query(self, emb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest indexed rows of each query: ``(idx (q, k), dist (q, k))``, nearest first."""
        emb = np.asarray(emb, dtype=np.float32)
        if emb.ndim == 1:
            emb = emb[None]
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise ValueError(f"query of shape {emb.shape} does not match the index dimension {self.dim}")
        k = min(int(k), len(self))
        if k < 1:
            raise ValueError("k must be >= 1 and the index non-empty")
        if self._nn is None:
            self._nn = NearestNeighbors(metric="euclidean", n_jobs=1).fit(self.embeddings)
        dist, idx = self._nn.kneighbors(emb, n_neighbors=k)
        return idx, dist.astype(np.float32)

    def save(self, out_dir) -> Path:
        """Write the index into ``out_dir``: a new path, an empty folder or an earlier index
        (:func:`index_target_problem`), so no one else's files are overwritten or removed."""
        out = Path(out_dir)
        why = index_target_problem(out)
        if why:
            raise ValueError(f"will not write an index to {out}: {why}")
        out.mkdir(parents=True, exist_ok=True)
        np.save(out / "embeddings.npy", self.embeddings)
        np.save(out / "labels.npy", self.labels)
        np.save(out / "key_ids.npy", self.key_ids)
        for name in ("indices", "points", "offsets"):
            arr = getattr(self, name)
            if arr is not None:
                np.save(out / f"{name}.npy", np.asarray(arr))
            elif (out / f"{name}.npy").exists():
                (out / f"{name}.npy").unlink()  # never leave a stale array from an older index
        meta = dict(self.meta)
        meta.update(format=INDEX_FORMAT, version=INDEX_VERSION, classes=list(self.classes),
                    ckpt_path=self.ckpt_path, ckpt_sha256=self.ckpt_sha256, n=len(self), dim=self.dim)
        (out / "index.json").write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def load(cls, path, mmap: bool = True) -> KNNIndex:
        """Open an index folder, checking every file, field and array it reads (a crafted or damaged
        index is one ``ValueError`` naming the file and the field, never a crash or a hang later on).
        Files must be regular files in the folder (a FIFO would block for ever, a link may not lead
        out of it), and each array exactly as large as its header says, before it is mapped."""
        root = Path(path)
        meta_file = root / "index.json"
        if not os.path.lexists(meta_file):
            raise FileNotFoundError(f"{root}: not a KNN index (no index.json); "
                                    "build one with `sketchembed index build`")
        meta = _read_index_meta(meta_file, root)
        classes = meta["classes"]

        def arr(name, kinds, ndim, required=True):
            f = root / f"{name}.npy"
            if not os.path.lexists(f):
                if required:
                    raise FileNotFoundError(f"{f}: missing from the index")
                return None
            # plain numbers only: an object array (a pickle) is refused, never unpickled
            a = load_plain_npy(f, root, mmap)
            if a.dtype.kind not in kinds or a.ndim != ndim:
                what = "floats" if kinds == "f" else "integers"
                raise ValueError(f"{f}: {name} must be a {ndim}-d array of {what}, got {a.dtype} of shape {a.shape}")
            return a

        emb = arr("embeddings", "f", 2)
        n = len(emb)
        if n == 0 or emb.shape[1] == 0:
            raise ValueError(f"{root / 'embeddings.npy'}: an empty index ({emb.shape})")
        rows = {name: arr(name, "iu", 1, name in ("labels", "key_ids")) for name in ("labels", "key_ids", "indices")}
        for name, a in rows.items():
            if a is not None and len(a) != n:
                raise ValueError(f"{root / f'{name}.npy'}: {len(a)} rows, but embeddings.npy has {n}")
            if a is not None and a.dtype.kind == "i" and a.min() < 0:
                raise ValueError(f"{root / f'{name}.npy'}: {name} must not be negative, found {a.min()}")
        labels = rows["labels"]
        if labels.max() >= len(classes):
            raise ValueError(f"{root / 'labels.npy'}: label {labels.max()} is outside the {len(classes)} classes "
                             f"of index.json")
        points, offsets = arr("points", "iu", 2, False), arr("offsets", "iu", 1, False)
        if (points is None) != (offsets is None):
            raise FileNotFoundError(f"{root / ('points.npy' if points is None else 'offsets.npy')}: missing from the "
                                    f"index (points.npy and offsets.npy go together)")
        if points is not None:
            _check_drawings(root, points, offsets, n)
        for key, want, unit in (("n", n, "rows"), ("dim", emb.shape[1], "columns")):
            if key in meta and meta[key] != want:
                raise ValueError(f"{meta_file}: '{key}' says {meta[key]}, but embeddings.npy has {want} {unit}")
        extra = {k: v for k, v in meta.items()
                 if k not in ("format", "version", "classes", "ckpt_path", "ckpt_sha256", "n", "dim")}
        try:  # what is left to check (finite embeddings) names the index folder
            return cls(embeddings=emb, labels=labels, key_ids=rows["key_ids"], classes=classes,
                       ckpt_path=meta.get("ckpt_path", ""), ckpt_sha256=meta.get("ckpt_sha256", ""),
                       indices=rows["indices"], points=points, offsets=offsets, meta=extra)
        except ValueError as e:
            raise ValueError(f"{root}: {e}") from None


# fields of index.json the code reads, with the check each value must pass and what that means
_META_FIELDS = {
    "classes": (lambda v: isinstance(v, list) and v and all(isinstance(c, str) and c and not unprintable(c) for c in v)
                and len(set(v)) == len(v),
                "a non-empty list of distinct class names (strings of plain text, no control characters)"),
    "ckpt_path": (lambda v: isinstance(v, str), "a string"),
    "ckpt_sha256": (lambda v: isinstance(v, str), "a string (the checkpoint's sha256)"),
    "n": (lambda v: type(v) is int and v >= 1, "a whole number >= 1"),
    "dim": (lambda v: type(v) is int and v >= 1, "a whole number >= 1"),
}


def _read_index_meta(meta_file: Path, root: Path) -> dict:
    """index.json, read as a manifest (a regular file of bounded size, by the readers' JSON decoder:
    too deep nesting is an error, not a crash) and checked field by field: format, version and
    every field in ``_META_FIELDS``."""
    meta = read_manifest(meta_file, root, "index metadata")
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_file}: index metadata must be a JSON object, got {type(meta).__name__}")
    if meta.get("format") != INDEX_FORMAT:
        raise ValueError(f"{meta_file}: not a sketchembed KNN index")
    if type(meta.get("version")) is not int or meta["version"] != INDEX_VERSION:
        found = json.dumps(meta["version"])[:20] if "version" in meta else "(none given)"
        raise ValueError(f"{meta_file}: index version {found}, but this code reads version {INDEX_VERSION}; "
                         f"rebuild the index with `sketchembed index build`")
    if "classes" not in meta:
        raise ValueError(f"{meta_file}: 'classes' is missing (the class names the labels refer to)")
    for key, (ok, what) in _META_FIELDS.items():
        if key in meta and not ok(meta[key]):
            raise ValueError(f"{meta_file}: '{key}' must be {what}, got {json.dumps(meta[key])[:60]}")
    return meta


def _check_drawings(root: Path, points: np.ndarray, offsets: np.ndarray, n: int, block: int = 1 << 20) -> None:
    """Offsets: ``n + 1`` entries from 0, increasing, ending at the points' length; points: ``(m, 3)``
    with x/y on the 0–255 canvas and a 0/1 pen (checked blockwise: the points may be memory-mapped)."""
    f = root / "offsets.npy"
    if len(offsets) != n + 1:
        raise ValueError(f"{f}: {len(offsets)} entries, need {n + 1} (one more than embeddings.npy's rows)")
    if offsets[0] != 0 or offsets[-1] != len(points):
        raise ValueError(f"{f}: offsets must run from 0 to {len(points)} (the rows of points.npy), "
                         f"got {offsets[0]}…{offsets[-1]}")
    for a in range(0, n, block):
        if np.any(np.diff(offsets[a:a + block + 1].astype(np.int64)) < 1):
            raise ValueError(f"{f}: offsets must increase (each drawing has points)")
    if points.shape[1] != 3:
        raise ValueError(f"{root / 'points.npy'}: points must be (m, 3) rows x, y, pen, got shape {points.shape}")
    for a in range(0, len(points), block):
        p = np.asarray(points[a:a + block])
        bad = ((p[:, :2] < 0) | (p[:, :2] > CANVAS_MAX)).any(1) | (p[:, 2] < 0) | (p[:, 2] > 1)
        if bad.any():
            raise ValueError(f"{root / 'points.npy'}: row {a + int(np.argmax(bad))} is {p[np.argmax(bad)].tolist()}; "
                             f"points must have x, y on 0–{CANVAS_MAX} and a pen of 0 or 1")


def index_target_problem(out) -> str | None:
    """Why the folder ``out`` cannot take an index, or None: it must be a new path, an empty folder
    or an earlier index (its own regular files only) — never a file, nor a folder of other things
    (their files would be replaced)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        return "it is a file, not a folder"
    if out.is_dir():
        try:
            names = {p.name for p in out.iterdir()}
        except OSError as e:
            return f"it cannot be listed ({e.strerror})"
        if names and "index.json" not in names:
            return "it is a folder that is not an index (no index.json); give a new path or an empty folder"
        why = own_files_problem(out, INDEX_FILES, "a KNN index") if names else None
        if why:  # writing follows links and opens FIFOs: an earlier index holds only its own regular files
            return why
        return None if os.access(out, os.W_OK) else "no permission to write there"
    parent = next(p for p in out.absolute().parents if p.exists())
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    return None if os.access(parent, os.W_OK) else f"no permission to write in {parent}"


def pack_points(drawings: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """List of ``(n_i, 3)`` point arrays → concatenated int16 points and (n+1) offsets."""
    lengths = np.array([len(d) for d in drawings], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    pts = (np.concatenate([np.asarray(d, dtype=np.int16) for d in drawings])
           if len(drawings) else np.zeros((0, 3), np.int16))
    return pts, offsets
