"""`python eval.py ckpt_path=PATH`: evaluates a trained model on the test split (or on every drawing
of ``data.test_dir``) and writes ``metrics.json``, ``predictions.npz``, the figures and ``report.md``
to the run dir (and to wandb when a logger is configured).

* The KNN index and the probe are built on the train split of the dataset the checkpoint was trained
  on (``knn.max_train``, default 100,000 as the study, caps it with a random subset, never with the
  first rows, which are sorted by class).
* Stages (``stages.json``: wall time and peak memory of each): embed (streamed batch by batch into
  preallocated arrays), KNN (exact brute force, faiss or blocks of torch matmul), retrieval (P@1,
  R-precision, MAP@R, NMI/AMI by pytorch-metric-learning, bounded by ``retrieval.*``, see
  :mod:`sketchembed.eval.retrieval`), probe, t-SNE (a sample), figures. Memory is the embeddings
  plus one batch: 100 k train drawings x 256 floats are 100 MB, the full 1.4 M 1.4 GB (700 MB with
  ``embed_dtype=float16``).
* Models without a classifier head (the triplet network) are classified by KNN (K=4, the study's
  choice for triplet embeddings) over that index; ``metrics.json`` says which in ``classifier``.
* KNN accuracies come under two vote rules: ``test/knn@K`` strict, ``test/knn@K_study_tie`` the
  study notebook's (see ``sketchembed.eval.knn``).
* The early-recognition curve is measured on every evaluated drawing at 50 % and 100 %, and on a
  random ``curve_max_eval`` of them (``n_curve``, rows ``curve_rows`` in predictions.npz) at the
  other fractions.
* ``data.test_dir`` drawings are labelled by class *name* (file name = class); a folder may hold any
  subset of the trained classes. Files naming other classes are an error; bad records inside a file
  are skipped and counted (``n_skipped``, with the first reasons in ``skipped``). Test drawings that
  are also in the index (same key_id) are counted in ``n_test_in_index``: their KNN neighbours
  include themselves.

Everything in ``metrics.json`` but the retrieval metrics can be recomputed from ``predictions.npz``
(labels and predictions per fraction, KNN and probe predictions, class names); those need the
embeddings (their queries are ``retrieval_rows``).
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from sklearn.metrics import balanced_accuracy_score, confusion_matrix

from sketchembed import metric_keys
from sketchembed.commands.dashboard import log_eval
from sketchembed.corpus.test_dir import check_test_dir
from sketchembed.data.datamodule import SketchDataModule
from sketchembed.data.inputs import RECIPE, read_inputs
from sketchembed.data.inputs import check as check_input
from sketchembed.entry import end_line, hydra_entry
from sketchembed.eval.confusion import confused_pairs
from sketchembed.eval.embed import embed_loader, model_views, pick_device, subset_loader
from sketchembed.eval.knn import (
    KNN_CLASSIFIER_K,
    nearest,
    neighbor_labels,
    resolve_backend,
    search,
    study_tie_correct,
    vote,
)
from sketchembed.eval.plots import plot_confusion, plot_early_recognition, plot_neighbors, plot_per_class, plot_tsne
from sketchembed.eval.probe import linear_probe
from sketchembed.eval.report import metrics_table, write_report
from sketchembed.eval.retrieval import Bounds, Retrieval, retrieval_metrics
from sketchembed.eval.stages import Stages
from sketchembed.eval.stats import with_intervals
from sketchembed.eval.tsne import tsne_map
from sketchembed.messages import short_list
from sketchembed.metric import triplet_accuracy
from sketchembed.models.checkpoint import file_sha256, open_checkpoint, trained_root
from sketchembed.study import STUDY_COL, STUDY_CURVE

log = logging.getLogger("sketchembed.eval")


def _ckpt_path(cfg: DictConfig) -> Path:
    if OmegaConf.is_missing(cfg, "ckpt_path") or cfg.ckpt_path is None:
        raise ValueError("ckpt_path=PATH is required (a checkpoint written by train.py, e.g. "
                         "outputs/train/runs/…/checkpoints/last.ckpt)")
    path = Path(str(cfg.ckpt_path))
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path}: no such file")
    return path


def _datamodule(st: EvalSettings, ckpt: dict, ckpt_path: Path, views):
    """A DataModule over the checkpoint's dataset serving its model's input settings (``data.<key>``
    of the eval config overrides one, e.g. ``data.image_size``; never ``data.channels``: the model's
    first layer takes the channels it was trained on)."""
    inputs = read_inputs(ckpt, str(ckpt_path))
    channels = st.inputs.get("channels")
    if channels is not None and check_input("channels", channels) != inputs.channels:
        raise ValueError(f"data.channels={list(channels)}: {ckpt_path} was trained on channels "
                         f"{list(inputs.channels)} (its first layer takes those; leave data.channels unset)")
    root = st.root or trained_root(ckpt) or "study10"
    dm = SketchDataModule.from_inputs(
        inputs.replace(**st.inputs), root, views=tuple(sorted(views)), eval_fractions=(1.0,),
        eval_batch_size=st.batch_size, num_workers=st.num_workers, seed=st.seed, max_train=st.max_train,
        max_eval=st.max_eval, test_dir=st.test_dir)
    try:
        classes = dm.class_names
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{e} (the dataset the checkpoint was trained on; set data.root=…)") from None
    if inputs.classes is not None and list(inputs.classes) != classes:
        raise ValueError(f"{ckpt_path}: trained on classes [{short_list(inputs.classes)}], but data.root={root} has "
                         f"[{short_list(classes)}] (labels would not match)")
    if st.test_dir:
        check_test_dir(st.test_dir, classes)
    return dm


def _skipped(dm) -> dict:
    """Bad records skipped while reading the evaluated drawings (test_dir) — or, for the dataset's own
    test split, while the whole dataset was prepared (not attributable to one split)."""
    manifest = getattr(dm.split_store("test"), "manifest", None) or {}
    sk = manifest.get("skipped") if isinstance(manifest.get("skipped"), dict) else {}
    return {"count": int(sk.get("count", 0) or 0), "items": list(sk.get("items") or [])[:20],
            "duplicates": int(manifest.get("duplicates", 0) or 0)}


def _json_safe(obj):
    """NaN/inf (e.g. triplet accuracy with a single class) → null: metrics.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _count(low: int, *, null: bool = False):
    """An integer >= ``low`` (``batch_size=0`` or ``abc`` named, never a silent fallback); with
    ``null``, None too (null = no cap; 0 is not "all")."""
    def check(key, v):
        if v is None and null:
            return None
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ValueError(f"{key} must be an integer >= {low}{' or null' if null else ''}, got {v!r}")
        return int(v)
    return check


def _positive(key, v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if isinstance(v, bool) or not f > 0:
        raise ValueError(f"{key} must be a number > 0, got {v!r}")
    return f


def _flag(key, v) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"{key} must be true or false, got {v!r}")
    return v


def _text(null: bool = False):
    def check(key, v):
        if v is None and null:
            return None
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or str(v) == "":
            raise ValueError(f"{key} must be a name or path{' or null' if null else ''}, got {v!r}")
        return str(v)
    return check


def _fractions(key, v) -> tuple[float, ...]:
    try:
        fractions = sorted({float(f) for f in v} | {0.5, 1.0})
    except (TypeError, ValueError):
        fractions = [float("nan")]
    if isinstance(v, str) or not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"{key} must be in (0, 1], got {v!r}")
    return tuple(fractions)


def _ks(key, v) -> tuple[int, ...]:
    if isinstance(v, str) or not isinstance(v, Sequence) or not v or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in v):
        raise ValueError(f"{key} must be a list of integers >= 1, got {v!r}")
    return tuple(sorted({int(k) for k in v}))


def _dtype(key, v):
    if v not in ("float32", "float16"):
        raise ValueError(f"{key} must be float32 or float16, got {v!r}")
    return np.float16 if v == "float16" else np.float32


def _setting(key: str, check):
    """A field of :class:`EvalSettings`: read from config ``key``, checked by ``check(key, value)``."""
    return field(metadata={"key": key, "check": check})


@dataclass(frozen=True)
class EvalSettings:
    """Every eval setting, read once from the composed config and checked (one ``ValueError`` naming
    the config key; exit 2 through the entry). conf/eval.yaml holds the defaults."""

    seed: int = _setting("seed", _count(0))
    device: str = _setting("device", _text())
    batch_size: int = _setting("batch_size", _count(1))
    dtype: type = _setting("embed_dtype", _dtype)
    fractions: tuple[float, ...] = _setting("fractions", _fractions)  # 0.5 and 1.0 always among them
    curve_max_eval: int | None = _setting("curve_max_eval", _count(1, null=True))
    root: str | None = _setting("data.root", _text(null=True))
    test_dir: str | None = _setting("data.test_dir", _text(null=True))
    max_eval: int | None = _setting("data.max_eval", _count(1, null=True))
    num_workers: int = _setting("data.num_workers", _count(0))
    ks: tuple[int, ...] = _setting("knn.ks", _ks)
    max_train: int | None = _setting("knn.max_train", _count(1, null=True))  # and >= the largest K
    backend: str = _setting("knn.backend", _text())  # resolved for knn_device
    knn_device: str = _setting("knn.device", _text())  # resolved: auto = eval's device
    query_block: int = _setting("knn.query_block", _count(1))
    retrieval_enabled: bool = _setting("retrieval.enabled", _flag)
    retrieval_max_queries: int | None = _setting("retrieval.max_queries", _count(1, null=True))
    retrieval_max_pairs: int = _setting("retrieval.max_pairs", _count(1))
    probe_hidden: int | None = _setting("probe.hidden", _count(1, null=True))
    probe_steps: int | None = _setting("probe.steps", _count(1, null=True))
    probe_batch_size: int | None = _setting("probe.batch_size", _count(1, null=True))
    probe_lr: float = _setting("probe.lr", _positive)
    tsne: bool = _setting("tsne.enabled", _flag)
    tsne_max_points: int = _setting("tsne.max_points", _count(1))
    tsne_n_iter: int = _setting("tsne.n_iter", _count(1))
    tsne_perplexity: float = _setting("tsne.perplexity", _positive)
    tsne_n_jobs: int = _setting("tsne.n_jobs", _count(1))
    max_classes: int = _setting("plots.max_classes", _count(2))
    confused_pairs: int = _setting("plots.confused_pairs", _count(0))
    per_class_each: int = _setting("plots.per_class_each", _count(1))
    n_refs: int = _setting("neighbors.n_refs", _count(0))
    neighbors_k: int = _setting("neighbors.k", _count(0))
    # data.<input setting> given in the eval config: overrides the checkpoint's (checked by data.inputs)
    inputs: Mapping = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> EvalSettings:
        values = {}
        for f in fields(cls):
            if "key" in f.metadata:
                raw = OmegaConf.select(cfg, f.metadata["key"], default=None)
                values[f.name] = f.metadata["check"](f.metadata["key"], OmegaConf.to_object(raw)
                                                     if OmegaConf.is_config(raw) else raw)
        low = max(values["ks"] + (KNN_CLASSIFIER_K,))
        if values["max_train"] is not None and values["max_train"] < low:
            raise ValueError(f"knn.max_train must be an integer >= {low} (the largest K) or null, "
                             f"got {values['max_train']!r}")
        knn_device = (pick_device(values["device"]) if values["knn_device"] == "auto"
                      else pick_device(values["knn_device"], "knn.device"))
        values["knn_device"] = str(knn_device)
        values["backend"] = resolve_backend(values["backend"], knn_device)
        inputs = {k: OmegaConf.select(cfg, f"data.{k}", default=None) for k in RECIPE}
        values["inputs"] = {k: OmegaConf.to_object(v) if OmegaConf.is_config(v) else v
                            for k, v in inputs.items() if v is not None}
        return cls(**values)

    @property
    def retrieval(self) -> Bounds | None:
        """The retrieval bounds; None when ``retrieval.enabled=false``."""
        return Bounds(self.retrieval_max_queries, self.retrieval_max_pairs) if self.retrieval_enabled else None

    @property
    def probe(self) -> dict:
        """Keyword arguments of :func:`~sketchembed.eval.probe.linear_probe` (null: its own default)."""
        given = {"hidden": self.probe_hidden, "steps": self.probe_steps, "batch_size": self.probe_batch_size}
        return {k: v for k, v in given.items() if v is not None} | {"lr": self.probe_lr}


@dataclass
class _Eval:
    """One evaluation's fixed parts, handed from stage to stage."""
    cfg: DictConfig
    st: EvalSettings
    ckpt_path: Path
    model: object
    kind: str
    dm: SketchDataModule
    stages: Stages
    device: torch.device | None = None
    out: Path | None = None

    @property
    def seed(self) -> int:
        return self.st.seed


@dataclass
class _Results:
    """What the embed, KNN and probe stages produce."""
    train: object
    tests: dict
    curve_rows: np.ndarray
    preds: dict
    confs: dict
    knn_preds: dict
    nl: np.ndarray
    probe_pred: np.ndarray
    retrieval: Retrieval

    @property
    def test(self):
        return self.tests[1.0]


def evaluate(cfg: DictConfig) -> dict:
    """The eval entry: load, then the stages of :func:`_run` (each timed in ``stages.json``)."""
    ev = _load(cfg)
    try:
        return _run(ev)
    finally:
        ev.dm.teardown()


def _load(cfg: DictConfig) -> _Eval:
    """Stage ``load``: the checkpoint read once, its model and a DataModule serving its input settings."""
    ckpt_path = _ckpt_path(cfg)
    st = EvalSettings.from_config(cfg)
    torch.manual_seed(st.seed)
    stages = Stages()
    with stages("load"):
        model, _, record, ckpt = open_checkpoint(ckpt_path)
        kind = record.kind
        dm = _datamodule(st, ckpt, ckpt_path, model_views(model))
        del ckpt
    return _Eval(cfg, st, ckpt_path, model, kind, dm, stages)


def _run(ev: _Eval) -> dict:
    len(ev.dm.dataset("test"))  # opens (prepares) test_dir and maps its labels before any heavy work
    ev.device = pick_device(ev.st.device)
    ev.model.to(ev.device)
    ev.out = Path(ev.cfg.paths.output_dir)
    ev.out.mkdir(parents=True, exist_ok=True)
    train, tests, curve_rows = _embed_stage(ev)
    preds, confs, knn_preds, nl, neighbours = _knn_stage(ev, train, tests)
    retrieval = _retrieval_stage(ev, train, tests[1.0], neighbours)
    probe_pred = _probe_stage(ev, train, tests[1.0])
    r = _Results(train, tests, curve_rows, preds, confs, knn_preds, nl, probe_pred, retrieval)
    with ev.stages("metrics"):
        m = _metrics(ev, r)
        _write_outputs(ev.out, m, _arrays(ev, r))
    _figures(ev, r, m)
    write_report(ev.out, m)
    log_eval(ev.cfg, ev.out, m, ev.dm.split_store("test").points, dict(ev.model.hparams))
    (ev.out / "stages.json").write_text(json.dumps(ev.stages.summary(), indent=2))
    _print(m, ev.kind)
    print(end_line(ev.out, [("report", [ev.out / "report.md", ev.out / "report.html"]),
                            ("metrics", [ev.out / "metrics.json"])]), flush=True)
    return m


def _embed_stage(ev: _Eval) -> tuple:
    """Stream the train split (KNN index, probe) and the test split at every fraction through the
    model: 100 % and 50 % on every evaluated drawing, the rest of the curve on ``curve_max_eval``."""
    st, dm = ev.st, ev.dm

    def embed(loader, **kw):
        return embed_loader(ev.model, loader, rasterizer=dm.rasterizer, device=ev.device, dtype=st.dtype, **kw)

    C = dm.num_classes
    with ev.stages("embed_train") as info:
        log.info("embedding %d train drawings (KNN index, probe)", len(dm.rows("train")))
        train = embed(dm.loader("train", 1.0), with_logits=False)
        info["n"] = len(train)
    if len(train) < max(st.ks + (KNN_CLASSIFIER_K,)):
        raise ValueError(f"{dm.root}: {len(train)} train drawings, too few for KNN with K={max(st.ks)}")
    n_test = len(dm.dataset("test"))
    curve_rows = np.arange(n_test)
    if st.curve_max_eval is not None and st.curve_max_eval < n_test:
        rng = np.random.default_rng([ev.seed, 7])
        curve_rows = np.sort(rng.choice(n_test, st.curve_max_eval, replace=False))
    tests = {}
    with ev.stages("embed_test") as info:
        log.info("embedding %d test drawings at 100 %% and 50 %%, %d at %d more fractions", n_test,
                 len(curve_rows), len(st.fractions) - 2)
        for f in sorted(st.fractions, reverse=True):  # 1.0 first: it fixes the order
            whole = f in (0.5, 1.0)
            loader = dm.loader("test", f) if whole else subset_loader(dm, "test", curve_rows, f)
            t = embed(loader, keep_logits=f == 1.0)
            if 1.0 in tests:
                ref = tests[1.0].indices if whole else tests[1.0].indices[curve_rows]
                if not np.array_equal(t.indices, ref):
                    raise RuntimeError("the test drawings came in another order at another fraction")
            if f == 1.0 and t.logits is not None and t.logits.shape[1] != C:
                raise ValueError(f"the classifier has {t.logits.shape[1]} outputs, {dm.root} has {C} classes")
            tests[f] = t
        tests[1.0].logits = None  # checked; only its argmax is needed from here on
        info["n"] = n_test
        info["n_curve"] = len(curve_rows)
    return train, tests, curve_rows


def _knn_stage(ev: _Eval, train, tests) -> tuple[dict, dict, dict, np.ndarray, tuple]:
    """One neighbour search per fraction: KNN accuracies (both vote rules) at 100 %, and for models
    without a classifier head their predictions (KNN K=4) at every fraction. Also each prediction's
    confidence: the softmax probability, or the share of the K=4 neighbours voting for it; and the
    100 % neighbours themselves ``(idx, d2)`` (the retrieval stage's P@1)."""
    st, C = ev.st, ev.dm.num_classes
    ks = st.ks
    has_logits = tests[1.0].pred is not None
    preds, confs = {}, {}
    kw = {"backend": st.backend, "query_block": st.query_block, "device": st.knn_device}
    with ev.stages("knn", n_index=len(train), backend=st.backend, device=str(st.knn_device)):
        neighbours = nearest(train.embeddings, train.labels, tests[1.0].embeddings, max(ks + (KNN_CLASSIFIER_K,)), **kw)
        nl = train.labels.astype(np.int64, copy=False)[neighbours[0]]
        knn_preds = {k: vote(nl, k, C) for k in ks}
        for f, t in tests.items():
            if has_logits:
                preds[f], confs[f] = t.predictions(), t.conf
                continue
            nf = nl if f == 1.0 else neighbor_labels(train.embeddings, train.labels, t.embeddings,
                                                     KNN_CLASSIFIER_K, **kw)
            preds[f] = vote(nf, KNN_CLASSIFIER_K, C)
            confs[f] = (nf[:, :KNN_CLASSIFIER_K] == preds[f][:, None]).mean(1).astype(np.float32)
    return preds, confs, knn_preds, nl, neighbours


def _retrieval_stage(ev: _Eval, train, test, neighbours) -> Retrieval:
    """P@1, R-precision, MAP@R, NMI and AMI of the test drawings against the KNN index (none of them
    when ``retrieval.enabled=false``)."""
    bounds = ev.st.retrieval
    if bounds is None:
        return Retrieval({}, {}, {}, np.zeros(0, np.int64))
    with ev.stages("retrieval", max_queries=bounds.max_queries) as info:
        ret = retrieval_metrics(train.embeddings, train.labels, test.embeddings, test.labels, neighbours,
                                bounds=bounds, seed=ev.seed, backend=ev.st.backend,
                                query_block=ev.st.query_block, device=ev.st.knn_device)
        info["n_queries"] = ret.values["n_retrieval_queries"]
        info["r_max"] = ret.values["retrieval_r_max"]
    return ret


def _probe_stage(ev: _Eval, train, test) -> np.ndarray:
    """The study's linear probe on the frozen train embeddings: its predictions on the test drawings."""
    with ev.stages("probe", steps=ev.st.probe_steps):
        probe = linear_probe(train.embeddings, train.labels, n_classes=ev.dm.num_classes, seed=ev.seed,
                             **ev.st.probe)
        return probe.predict(test.embeddings)


def _metrics(ev: _Eval, r: _Results) -> dict:
    """The dict of metrics.json, with its 95 % intervals."""
    dm, test = ev.dm, r.test
    classes = dm.class_names
    y = test.labels
    skipped = _skipped(dm)
    m: dict = {"model_kind": ev.kind, "checkpoint": str(ev.ckpt_path), "checkpoint_sha256": file_sha256(ev.ckpt_path),
               "dataset": str(dm.test_dir or dm.root), "index_dataset": str(dm.root),
               "split": "test_dir" if dm.test_dir else "test", "classes": classes,
               "classifier": "logits" if test.pred is not None else metric_keys.knn(KNN_CLASSIFIER_K),
               "n_train": int(len(r.train)), "n_test": int(len(test)), "n_evaluated": int(len(test)),
               "n_curve": int(len(r.curve_rows)),
               "n_skipped": skipped["count"] if dm.test_dir else 0,
               "n_duplicates_dropped": skipped["duplicates"] if dm.test_dir else 0,
               "n_test_in_index": int(np.isin(test.key_ids, r.train.key_ids).sum())}
    if dm.test_dir:
        m["skipped"] = skipped["items"]
    else:
        m["dataset_skipped_at_prepare"] = skipped["count"]
    if m["n_test_in_index"]:
        log.warning("%d of the %d evaluated drawings are also in the KNN index (train split): their KNN "
                    "neighbours include themselves", m["n_test_in_index"], len(test))
    curve = {}
    for f in sorted(r.preds):
        yf = y if f in (0.5, 1.0) else y[r.curve_rows]
        curve[f] = float((r.preds[f] == yf).mean())
        m[metric_keys.key("test", "acc", f)] = curve[f]
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" on a subset of classes
        warnings.simplefilter("ignore", UserWarning)
        for f in (0.5, 1.0):
            m[metric_keys.key("test", "balanced_acc", f)] = float(balanced_accuracy_score(y, r.preds[f]))
    cm = confusion_matrix(y, r.preds[1.0], labels=list(range(len(classes))))
    m["confusion_matrix"] = cm.tolist()
    n_per = cm.sum(1)
    m["per_class_acc@100"] = {c: (float(cm[i, i] / n_per[i]) if n_per[i] else None) for i, c in enumerate(classes)}
    m["per_class_n"] = {c: int(n_per[i]) for i, c in enumerate(classes)}
    m["early_recognition"] = {metric_keys.fraction_tag(f): curve[f] for f in sorted(curve)}
    for k in ev.st.ks:
        m[metric_keys.key("test", metric_keys.knn(k))] = float((r.knn_preds[k] == y).mean())
        m[metric_keys.key("test", metric_keys.knn(k, study_tie=True))] = float(
            study_tie_correct(r.nl, k, y, len(classes)).mean())
    m[metric_keys.key("test", "probe_acc")] = float((r.probe_pred == y).mean())
    if ev.model.TRIPLET_METRICS:
        gen = torch.Generator().manual_seed(ev.seed)
        acc, dp, dn = triplet_accuracy(torch.from_numpy(np.asarray(test.embeddings, np.float32)),
                                       torch.from_numpy(y), generator=gen)
        for name, v in (("triplet_acc", acc), ("d_pos", dp), ("d_neg", dn)):
            m[metric_keys.key("test", name)] = float(v)
    m["confused_pairs"] = confused_pairs(cm, classes, ev.st.confused_pairs)
    ret = r.retrieval
    m.update(ret.values)
    # the curve's other fractions are measured on n_curve drawings, not n_test
    m = with_intervals(m, n_overrides={metric_keys.key("test", "acc", f): m["n_curve"]
                                       for f in ev.st.fractions if f not in (0.5, 1.0)} | ret.n_overrides)
    m["intervals"].update(ret.intervals)
    return m


def _arrays(ev: _Eval, r: _Results) -> dict:
    """predictions.npz: everything metrics.json can be recomputed from."""
    test, fractions = r.test, ev.st.fractions
    return dict(classes=np.array(ev.dm.class_names), fractions=np.array(fractions), labels=test.labels,
                key_ids=test.key_ids, indices=test.indices, probe=r.probe_pred, curve_rows=r.curve_rows,
                index_key_ids=r.train.key_ids, index_labels=r.train.labels, knn_neighbor_labels=r.nl,
                retrieval_rows=r.retrieval.rows,
                **{metric_keys.tagged("pred", f): r.preds[f] for f in fractions},
                **{metric_keys.tagged("conf", f): r.confs[f] for f in fractions},
                **{metric_keys.knn(k): r.knn_preds[k] for k in ev.st.ks})


def _write_outputs(out: Path, m: dict, arrays: dict) -> None:
    """The one place metrics.json (and the predictions it can be recomputed from) is written."""
    np.savez(out / "predictions.npz", **arrays)
    (out / "metrics.json").write_text(json.dumps(_json_safe(m), indent=2, allow_nan=False))


def _figures(ev: _Eval, r: _Results, m: dict) -> None:
    """Stages ``tsne`` (the map and its points) and ``figures``."""
    if ev.st.tsne:
        _tsne_figure(ev, r.test)
    with ev.stages("figures"):
        _figures_of_predictions(ev, r, m)


def _where(ev: _Eval) -> str:
    return "test_dir" if ev.dm.test_dir else "test"


def _tsne_figure(ev: _Eval, test) -> None:
    st, classes = ev.st, ev.dm.class_names
    with ev.stages("tsne") as info:
        rng = np.random.default_rng(ev.seed)
        rows = np.arange(len(test))
        if len(rows) > st.tsne_max_points:
            rows = np.sort(rng.choice(rows, st.tsne_max_points, replace=False))
        xy = tsne_map(np.asarray(test.embeddings[rows], np.float32), seed=ev.seed, max_points=None,
                      n_iter=st.tsne_n_iter, perplexity=st.tsne_perplexity, n_jobs=st.tsne_n_jobs)
        info["n"] = len(rows)
        plot_tsne(ev.out / "tsne.png", xy, test.labels[rows], classes, max_legend=min(18, st.max_classes),
                  title=f"t-SNE of {len(rows)} {ev.kind} {_where(ev)} embeddings")
        np.savez(ev.out / "tsne.npz", rows=rows, xy=xy)  # the map's points (rows of predictions.npz)


def _figures_of_predictions(ev: _Eval, r: _Results, m: dict) -> None:
    """Confusion matrix, per-class accuracy, the early-recognition curve beside the study's, neighbours."""
    st, dm, out, kind, test, train = ev.st, ev.dm, ev.out, ev.kind, r.test, r.train
    classes, pred = dm.class_names, r.preds[1.0]
    acc = 100 * float((pred == test.labels).mean())
    plot_confusion(out / "confusion.png", test.labels, pred, classes, max_classes=st.max_classes,
                   title=f"{kind}: {_where(ev)}, 100 % of the drawing (accuracy {acc:.1f} %, n={len(test)})")
    plot_per_class(out / "per_class.png", np.asarray(m["confusion_matrix"]), classes, n_each=st.per_class_each)
    curve = {float(f) / 100: v for f, v in m["early_recognition"].items()}
    study = STUDY_CURVE.get(kind)
    plot_early_recognition(out / "early_recognition.png", {f"{kind} (this run)": curve},
                           references={STUDY_COL: study} if study else None)
    n_refs, k = ev.st.n_refs, ev.st.neighbors_k
    if n_refs > 0 and k > 0:
        rng = np.random.default_rng(ev.seed)
        refs = np.sort(rng.choice(len(test), min(n_refs, len(test)), replace=False))
        idx, d2 = search(train.embeddings, test.embeddings[refs], min(k, len(train)), backend=st.backend,
                         device=st.knn_device)
        test_store, train_store = dm.split_store("test"), dm.split_store("train")
        plot_neighbors(out / "neighbors.png",
                       [test_store.points(int(test.indices[i])) for i in refs], [int(test.labels[i]) for i in refs],
                       [[train_store.points(int(train.indices[j])) for j in row] for row in idx],
                       [[int(train.labels[j]) for j in row] for row in idx], classes, distances=np.sqrt(d2))


def _print(m: dict, kind: str) -> None:
    Console().print(metrics_table(m, f"{kind}: {m['dataset']} ({m['n_test']} drawings, {m['n_skipped']} skipped; "
                                     f"classifier: {m['classifier']})"))


def main() -> None:
    hydra_entry("eval", evaluate)()


if __name__ == "__main__":
    main()
