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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from sklearn.metrics import balanced_accuracy_score, confusion_matrix

from sketchembed import metric_keys
from sketchembed.data.datamodule import SketchDataModule
from sketchembed.data.inputs import RECIPE, read_inputs
from sketchembed.corpus.test_dir import check_test_dir
from sketchembed.entry import end_line, hydra_entry
from sketchembed.eval.confusion import confused_pairs
from sketchembed.commands.dashboard import log_eval
from sketchembed.eval.embed import embed_loader, model_views, pick_device, subset_loader
from sketchembed.eval.knn import (KNN_CLASSIFIER_K, nearest, neighbor_labels, resolve_backend, search,
                                  study_tie_correct, vote)
from sketchembed.eval.plots import (plot_confusion, plot_early_recognition, plot_neighbors, plot_per_class,
                                    plot_tsne)
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


def _sel(cfg: DictConfig, key: str, default=None):
    v = OmegaConf.select(cfg, key, default=default)
    return default if v is None else v


def _ckpt_path(cfg: DictConfig) -> Path:
    if OmegaConf.is_missing(cfg, "ckpt_path") or cfg.ckpt_path is None:
        raise ValueError("ckpt_path=PATH is required (a checkpoint written by train.py, e.g. "
                         "outputs/train/runs/…/checkpoints/last.ckpt)")
    path = Path(str(cfg.ckpt_path))
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path={path}: no such file")
    return path


def _datamodule(cfg: DictConfig, ckpt: dict, ckpt_path: Path, views, max_train: int | None = None):
    """A DataModule over the checkpoint's dataset serving its model's input settings (``data.<key>``
    of the eval config overrides one, e.g. ``data.image_size``)."""
    inputs = read_inputs(ckpt, str(ckpt_path))
    overrides = {k: _sel(cfg, f"data.{k}") for k in RECIPE if _sel(cfg, f"data.{k}") is not None}
    root = _sel(cfg, "data.root") or trained_root(ckpt) or "study10"
    test_dir = _sel(cfg, "data.test_dir")
    dm = SketchDataModule.from_inputs(
        inputs.replace(**overrides), root, views=tuple(sorted(views)), eval_fractions=(1.0,),
        eval_batch_size=_int(cfg, "batch_size"), num_workers=_int(cfg, "data.num_workers", 0, default=0),
        seed=_int(cfg, "seed", 0), max_train=max_train, max_eval=_int_or_none(cfg, "data.max_eval"),
        test_dir=str(test_dir) if test_dir else None)
    try:
        classes = dm.class_names
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{e} (the dataset the checkpoint was trained on; set data.root=…)") from None
    if inputs.classes is not None and list(inputs.classes) != classes:
        raise ValueError(f"{ckpt_path}: trained on classes [{short_list(inputs.classes)}], but data.root={root} has "
                         f"[{short_list(classes)}] (labels would not match)")
    if test_dir:
        check_test_dir(str(test_dir), classes)
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


def _int_or_none(cfg: DictConfig, key: str, minimum: int = 1) -> int | None:
    v = _sel(cfg, key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum} or null, got {v!r}")
    return int(v)


def _int(cfg: DictConfig, key: str, minimum: int = 1, default: int | None = None) -> int:
    """A count that must be given (``batch_size=0`` or ``abc`` named, never a silent fallback)."""
    v = _sel(cfg, key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise ValueError(f"{key} must be an integer >= {minimum}, got {v!r}")
    return v


def _positive_float(cfg: DictConfig, key: str, default: float) -> float:
    v = _sel(cfg, key, default)
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = float("nan")
    if isinstance(v, bool) or not f > 0:
        raise ValueError(f"{key} must be a number > 0, got {v!r}")
    return f


def _settings(cfg: DictConfig) -> dict:
    """Every eval setting checked up front (one line naming the key on a bad value)."""
    fractions = sorted({float(f) for f in cfg.fractions} | {0.5, 1.0})
    if not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1], got {list(cfg.fractions)}")
    raw_ks = _sel(cfg, "knn.ks", [])
    if not OmegaConf.is_list(raw_ks) or not raw_ks or not all(isinstance(k, int) and not isinstance(k, bool)
                                                              and k >= 1 for k in raw_ks):
        raise ValueError(f"knn.ks must be a list of integers >= 1, got {raw_ks}")
    ks = sorted({int(k) for k in raw_ks})
    dtype = str(_sel(cfg, "embed_dtype", "float32"))
    if dtype not in ("float32", "float16"):
        raise ValueError(f"embed_dtype must be float32 or float16, got {dtype!r}")
    knn_device = str(_sel(cfg, "knn.device", "cpu"))
    knn_device = (pick_device(str(cfg.device)) if knn_device == "auto" else pick_device(knn_device, "knn.device"))
    for key, minimum in (("batch_size", 1), ("seed", 0), ("neighbors.n_refs", 0), ("neighbors.k", 0)):
        _int(cfg, key, minimum)
    _int(cfg, "data.num_workers", 0, default=0)
    _int_or_none(cfg, "data.max_eval")  # null: every drawing; 0 is not "all"
    return {"fractions": fractions, "ks": ks, "knn_device": knn_device,
            "backend": resolve_backend(str(_sel(cfg, "knn.backend", "auto")), knn_device),
            "query_block": _int_or_none(cfg, "knn.query_block") or 2048,
            "max_train": _int_or_none(cfg, "knn.max_train", max(ks + [KNN_CLASSIFIER_K])),
            "curve_max_eval": _int_or_none(cfg, "curve_max_eval"),
            "probe": {k: _int_or_none(cfg, f"probe.{k}") for k in ("hidden", "steps", "batch_size")}
            | {"lr": _positive_float(cfg, "probe.lr", 1e-3)},
            "tsne": bool(_sel(cfg, "tsne.enabled", True)), "tsne_max_points": _int_or_none(cfg, "tsne.max_points") or 5000,
            "tsne_n_iter": _int_or_none(cfg, "tsne.n_iter") or 500, "tsne_n_jobs": _int_or_none(cfg, "tsne.n_jobs") or 1,
            "tsne_perplexity": _positive_float(cfg, "tsne.perplexity", 30.0),
            "max_classes": _int_or_none(cfg, "plots.max_classes", 2) or 30,
            "confused_pairs": _int_or_none(cfg, "plots.confused_pairs", 0) or 0,
            "per_class_each": _int_or_none(cfg, "plots.per_class_each") or 20,
            "retrieval": _retrieval_bounds(cfg),
            "dtype": np.float16 if dtype == "float16" else np.float32}


def _retrieval_bounds(cfg: DictConfig) -> Bounds | None:
    """``retrieval.*``; None when ``retrieval.enabled=false`` (``max_queries: null`` = every query)."""
    enabled = _sel(cfg, "retrieval.enabled", True)
    if not isinstance(enabled, bool):
        raise ValueError(f"retrieval.enabled must be true or false, got {enabled!r}")
    if not enabled:
        return None
    given = OmegaConf.select(cfg, "retrieval.max_queries", default="missing")
    max_queries = Bounds.max_queries if given == "missing" else _int_or_none(cfg, "retrieval.max_queries")
    return Bounds(max_queries, _int(cfg, "retrieval.max_pairs", default=Bounds.max_pairs))


@dataclass
class _Eval:
    """One evaluation's fixed parts, handed from stage to stage."""
    cfg: DictConfig
    st: dict
    ckpt_path: Path
    model: object
    kind: str
    dm: SketchDataModule
    stages: Stages
    device: torch.device | None = None
    out: Path | None = None

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)


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
    st = _settings(cfg)
    torch.manual_seed(int(cfg.seed))
    stages = Stages()
    with stages("load"):
        model, _, record, ckpt = open_checkpoint(ckpt_path)
        kind = record.kind
        dm = _datamodule(cfg, ckpt, ckpt_path, model_views(model), st["max_train"])
        del ckpt
    return _Eval(cfg, st, ckpt_path, model, kind, dm, stages)


def _run(ev: _Eval) -> dict:
    len(ev.dm.dataset("test"))  # opens (prepares) test_dir and maps its labels before any heavy work
    ev.device = pick_device(str(ev.cfg.device))
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
        return embed_loader(ev.model, loader, rasterizer=dm.rasterizer, device=ev.device, dtype=st["dtype"], **kw)

    C = dm.num_classes
    with ev.stages("embed_train") as info:
        log.info("embedding %d train drawings (KNN index, probe)", len(dm.rows("train")))
        train = embed(dm.loader("train", 1.0), with_logits=False)
        info["n"] = len(train)
    if len(train) < max(st["ks"] + [KNN_CLASSIFIER_K]):
        raise ValueError(f"{dm.root}: {len(train)} train drawings, too few for KNN with K={max(st['ks'])}")
    n_test = len(dm.dataset("test"))
    curve_rows = np.arange(n_test)
    if st["curve_max_eval"] is not None and st["curve_max_eval"] < n_test:
        rng = np.random.default_rng([ev.seed, 7])
        curve_rows = np.sort(rng.choice(n_test, st["curve_max_eval"], replace=False))
    tests = {}
    with ev.stages("embed_test") as info:
        log.info("embedding %d test drawings at 100 %% and 50 %%, %d at %d more fractions", n_test,
                 len(curve_rows), len(st["fractions"]) - 2)
        for f in sorted(st["fractions"], reverse=True):  # 1.0 first: it fixes the order
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
    ks = st["ks"]
    has_logits = tests[1.0].pred is not None
    preds, confs = {}, {}
    kw = {"backend": st["backend"], "query_block": st["query_block"], "device": st["knn_device"]}
    with ev.stages("knn", n_index=len(train), backend=st["backend"], device=str(st["knn_device"])):
        neighbours = nearest(train.embeddings, train.labels, tests[1.0].embeddings, max(ks + [KNN_CLASSIFIER_K]), **kw)
        nl = train.labels.astype(np.int64, copy=False)[neighbours[0]]
        knn_preds = {k: vote(nl, k, C) for k in ks}
        for f, t in tests.items():
            if has_logits:
                preds[f], confs[f] = t.predictions(), t.conf
                continue
            nf = nl if f == 1.0 else neighbor_labels(train.embeddings, train.labels, t.embeddings, KNN_CLASSIFIER_K, **kw)
            preds[f] = vote(nf, KNN_CLASSIFIER_K, C)
            confs[f] = (nf[:, :KNN_CLASSIFIER_K] == preds[f][:, None]).mean(1).astype(np.float32)
    return preds, confs, knn_preds, nl, neighbours


def _retrieval_stage(ev: _Eval, train, test, neighbours) -> Retrieval:
    """P@1, R-precision, MAP@R, NMI and AMI of the test drawings against the KNN index (none of them
    when ``retrieval.enabled=false``)."""
    bounds = ev.st["retrieval"]
    if bounds is None:
        return Retrieval({}, {}, {}, np.zeros(0, np.int64))
    with ev.stages("retrieval", max_queries=bounds.max_queries) as info:
        ret = retrieval_metrics(train.embeddings, train.labels, test.embeddings, test.labels, neighbours,
                                bounds=bounds, seed=ev.seed, backend=ev.st["backend"],
                                query_block=ev.st["query_block"], device=ev.st["knn_device"])
        info["n_queries"] = ret.values["n_retrieval_queries"]
        info["r_max"] = ret.values["retrieval_r_max"]
    return ret


def _probe_stage(ev: _Eval, train, test) -> np.ndarray:
    """The study's linear probe on the frozen train embeddings: its predictions on the test drawings."""
    with ev.stages("probe", steps=ev.st["probe"]["steps"]):
        probe = linear_probe(train.embeddings, train.labels, n_classes=ev.dm.num_classes, seed=ev.seed,
                             **{k: v for k, v in ev.st["probe"].items() if v is not None})
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
    for k in ev.st["ks"]:
        m[metric_keys.key("test", metric_keys.knn(k))] = float((r.knn_preds[k] == y).mean())
        m[metric_keys.key("test", metric_keys.knn(k, study_tie=True))] = float(study_tie_correct(r.nl, k, y, len(classes)).mean())
    m[metric_keys.key("test", "probe_acc")] = float((r.probe_pred == y).mean())
    if tuple(getattr(ev.model, "LOSS_KINDS", ())) == ("triplet",):  # no classifier: triplet accuracy
        gen = torch.Generator().manual_seed(ev.seed)
        acc, dp, dn = triplet_accuracy(torch.from_numpy(np.asarray(test.embeddings, np.float32)),
                                       torch.from_numpy(y), generator=gen)
        for name, v in (("triplet_acc", acc), ("d_pos", dp), ("d_neg", dn)):
            m[metric_keys.key("test", name)] = float(v)
    m["confused_pairs"] = confused_pairs(cm, classes, ev.st["confused_pairs"])
    ret = r.retrieval
    m.update(ret.values)
    # the curve's other fractions are measured on n_curve drawings, not n_test
    m = with_intervals(m, n_overrides={metric_keys.key("test", "acc", f): m["n_curve"]
                                       for f in ev.st["fractions"] if f not in (0.5, 1.0)} | ret.n_overrides)
    m["intervals"].update(ret.intervals)
    return m


def _arrays(ev: _Eval, r: _Results) -> dict:
    """predictions.npz: everything metrics.json can be recomputed from."""
    test, fractions = r.test, ev.st["fractions"]
    return dict(classes=np.array(ev.dm.class_names), fractions=np.array(fractions), labels=test.labels,
                key_ids=test.key_ids, indices=test.indices, probe=r.probe_pred, curve_rows=r.curve_rows,
                index_key_ids=r.train.key_ids, index_labels=r.train.labels, knn_neighbor_labels=r.nl,
                retrieval_rows=r.retrieval.rows,
                **{metric_keys.tagged("pred", f): r.preds[f] for f in fractions}, **{metric_keys.tagged("conf", f): r.confs[f] for f in fractions},
                **{metric_keys.knn(k): r.knn_preds[k] for k in ev.st["ks"]})


def _write_outputs(out: Path, m: dict, arrays: dict) -> None:
    """The one place metrics.json (and the predictions it can be recomputed from) is written."""
    np.savez(out / "predictions.npz", **arrays)
    (out / "metrics.json").write_text(json.dumps(_json_safe(m), indent=2, allow_nan=False))


def _figures(ev: _Eval, r: _Results, m: dict) -> None:
    """Stages ``tsne`` (the map and its points) and ``figures``."""
    if ev.st["tsne"]:
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
        if len(rows) > st["tsne_max_points"]:
            rows = np.sort(rng.choice(rows, st["tsne_max_points"], replace=False))
        xy = tsne_map(np.asarray(test.embeddings[rows], np.float32), seed=ev.seed, max_points=None,
                      n_iter=st["tsne_n_iter"], perplexity=st["tsne_perplexity"], n_jobs=st["tsne_n_jobs"])
        info["n"] = len(rows)
        plot_tsne(ev.out / "tsne.png", xy, test.labels[rows], classes, max_legend=min(18, st["max_classes"]),
                  title=f"t-SNE of {len(rows)} {ev.kind} {_where(ev)} embeddings")
        np.savez(ev.out / "tsne.npz", rows=rows, xy=xy)  # the map's points (rows of predictions.npz)


def _figures_of_predictions(ev: _Eval, r: _Results, m: dict) -> None:
    """Confusion matrix, per-class accuracy, the early-recognition curve beside the study's, neighbours."""
    st, dm, out, kind, test, train = ev.st, ev.dm, ev.out, ev.kind, r.test, r.train
    classes, pred = dm.class_names, r.preds[1.0]
    acc = 100 * float((pred == test.labels).mean())
    plot_confusion(out / "confusion.png", test.labels, pred, classes, max_classes=st["max_classes"],
                   title=f"{kind}: {_where(ev)}, 100 % of the drawing (accuracy {acc:.1f} %, n={len(test)})")
    plot_per_class(out / "per_class.png", np.asarray(m["confusion_matrix"]), classes, n_each=st["per_class_each"])
    curve = {float(f) / 100: v for f, v in m["early_recognition"].items()}
    study = STUDY_CURVE.get(kind)
    plot_early_recognition(out / "early_recognition.png", {f"{kind} (this run)": curve},
                           references={STUDY_COL: study} if study else None)
    n_refs, k = int(ev.cfg.neighbors.n_refs), int(ev.cfg.neighbors.k)
    if n_refs > 0 and k > 0:
        rng = np.random.default_rng(ev.seed)
        refs = np.sort(rng.choice(len(test), min(n_refs, len(test)), replace=False))
        idx, d2 = search(train.embeddings, test.embeddings[refs], min(k, len(train)), backend=st["backend"],
                         device=st["knn_device"])
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
