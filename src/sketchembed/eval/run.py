"""`python eval.py ckpt_path=PATH`: evaluates a trained model on the test split (or on every drawing
of ``data.test_dir``) and writes ``metrics.json``, ``predictions.npz``, the figures and ``report.md``
to the run dir (and to wandb when a logger is configured).

* The KNN index and the probe are built on the train split of the dataset the checkpoint was trained
  on (``knn.max_train``, default 100,000 as the study, caps it with a random subset, never with the
  first rows, which are sorted by class).
* Stages (``stages.json``: wall time and peak memory of each): embed (streamed batch by batch into
  preallocated arrays), KNN (exact brute force, faiss or blocks of torch matmul), probe, t-SNE (a
  sample), figures. Memory is the embeddings plus one batch: 100 k train drawings x 256 floats are
  100 MB, the full 1.4 M 1.4 GB (700 MB with ``embed_dtype=float16``).
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

Everything in ``metrics.json`` can be recomputed from ``predictions.npz`` (labels and predictions per
fraction, KNN and probe predictions, class names).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from sketchembed.eval.checkpoint import INPUT_KEYS
from sketchembed.eval.report import STUDY_CURVE
from sketchembed.messages import short_list

log = logging.getLogger("sketchembed.eval")

KNN_CLASSIFIER_K = 4


def _tag(f: float) -> str:
    pct = 100.0 * float(f)
    return str(int(round(pct))) if abs(pct - round(pct)) < 1e-6 else f"{pct:g}"


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a torch device (auto, cpu, cuda, cuda:0 …)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name}: no CUDA device here (device=auto picks one when there is)")
    return dev


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


def _check_test_dir(test_dir: str, classes: list[str]) -> None:
    """Fail early, naming the files, on a folder the model cannot be evaluated on."""
    from sketchembed.data.formats import discover, suffix_list

    path = Path(test_dir)
    if not path.exists():
        raise FileNotFoundError(f"data.test_dir={path}: no such folder")
    if (path / "manifest.json").is_file():
        return  # a prepared dataset: the DataModule maps its classes by name (and names strangers)
    if not path.is_dir():
        raise ValueError(f"data.test_dir={path}: not a folder (expected a folder of per-class files "
                         f"{suffix_list('/')} or a prepared dataset)")
    found = discover([path])
    if not found:
        raise ValueError(f"data.test_dir={path}: no per-class files (<class>{suffix_list(', <class>')}) in it")
    unknown = {c: files for c, files in found.items() if c not in set(classes)}
    if unknown:
        names = short_list(f for c in sorted(unknown) for f in unknown[c])
        raise ValueError(f"data.test_dir={path}: {names}: class(es) [{short_list(sorted(unknown))}] unknown to the model "
                         f"(trained on: {short_list(classes)})")


def _datamodule(cfg: DictConfig, ckpt: dict, ckpt_path: Path, views, max_train: int | None = None):
    """A DataModule over the checkpoint's dataset with its raster settings and sequence statistics."""
    from sketchembed.data.datamodule import SketchDataModule
    from sketchembed.eval.checkpoint import _plain

    state = ckpt.get(SketchDataModule.__qualname__) or ckpt.get(SketchDataModule.__name__)
    if not (isinstance(state, dict) and state.get("seq_std")):
        raise ValueError(f"{ckpt_path}: checkpoint carries no data state (seq_std): not a sketchembed "
                         "training checkpoint")
    dm_hp = _plain(ckpt.get("datamodule_hyper_parameters") or {})
    root = _sel(cfg, "data.root") or dm_hp.get("root") or "study10"
    kwargs = {k: dm_hp[k] for k in INPUT_KEYS if dm_hp.get(k) is not None}
    kwargs.update({k: _sel(cfg, f"data.{k}") for k in INPUT_KEYS if _sel(cfg, f"data.{k}") is not None})
    max_eval = _sel(cfg, "data.max_eval")
    test_dir = _sel(cfg, "data.test_dir")
    dm = SketchDataModule(root=str(root), views=tuple(sorted(views)), eval_fractions=(1.0,),
                          eval_batch_size=int(cfg.batch_size), num_workers=int(_sel(cfg, "data.num_workers", 0)),
                          seed=int(cfg.seed), max_train=max_train,
                          max_eval=int(max_eval) if max_eval else None,
                          test_dir=str(test_dir) if test_dir else None, **kwargs)
    try:
        classes = dm.class_names
    except (FileNotFoundError, ValueError) as e:
        raise type(e)(f"{e} (the dataset the checkpoint was trained on; set data.root=…)") from None
    trained = state.get("classes")
    if trained is not None and list(trained) != classes:
        raise ValueError(f"{ckpt_path}: trained on classes [{short_list(trained)}], but data.root={root} has "
                         f"[{short_list(classes)}] (labels would not match)")
    dm.load_state_dict({"seq_std": float(state["seq_std"])})
    if test_dir:
        _check_test_dir(str(test_dir), classes)
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
    from sketchembed.eval.knn import resolve_backend

    dtype = str(_sel(cfg, "embed_dtype", "float32"))
    if dtype not in ("float32", "float16"):
        raise ValueError(f"embed_dtype must be float32 or float16, got {dtype!r}")
    return {"fractions": fractions, "ks": ks, "backend": resolve_backend(str(_sel(cfg, "knn.backend", "auto"))),
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
            "dtype": np.float16 if dtype == "float16" else np.float32}


def evaluate(cfg: DictConfig) -> dict:
    import torch

    from sketchembed.eval.checkpoint import load_model, read_checkpoint
    from sketchembed.eval.embed import model_views
    from sketchembed.eval.stages import Stages

    ckpt_path = _ckpt_path(cfg)
    st = _settings(cfg)
    torch.manual_seed(int(cfg.seed))
    stages = Stages()
    with stages("load"):
        ckpt = read_checkpoint(ckpt_path)
        model = load_model(ckpt_path)
        kind = str(model.hparams.get("model_kind", type(model).__name__))
        dm = _datamodule(cfg, ckpt, ckpt_path, model_views(model), st["max_train"])
        del ckpt
    try:
        return _evaluate(cfg, st, ckpt_path, model, kind, dm, stages)
    finally:
        dm.teardown()


def _embed_stage(cfg, st, model, dm, device, stages) -> tuple:
    """Stream the train split (KNN index, probe) and the test split at every fraction through the
    model: 100 % and 50 % on every evaluated drawing, the rest of the curve on ``curve_max_eval``."""
    from sketchembed.eval.embed import embed_loader, subset_loader

    def embed(loader, **kw):
        return embed_loader(model, loader, rasterizer=dm.rasterizer, device=device, dtype=st["dtype"], **kw)

    C = dm.num_classes
    with stages("embed_train") as info:
        log.info("embedding %d train drawings (KNN index, probe)", len(dm.rows("train")))
        train = embed(dm.loader("train", 1.0), with_logits=False)
        info["n"] = len(train)
    if len(train) < max(st["ks"] + [KNN_CLASSIFIER_K]):
        raise ValueError(f"{dm.root}: {len(train)} train drawings, too few for KNN with K={max(st['ks'])}")
    n_test = len(dm.dataset("test"))
    curve_rows = np.arange(n_test)
    if st["curve_max_eval"] is not None and st["curve_max_eval"] < n_test:
        rng = np.random.default_rng([int(cfg.seed), 7])
        curve_rows = np.sort(rng.choice(n_test, st["curve_max_eval"], replace=False))
    tests = {}
    with stages("embed_test") as info:
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


def _knn_stage(st, train, tests, C, has_logits, stages) -> tuple[dict, dict, dict, np.ndarray]:
    """One neighbour search per fraction: KNN accuracies (both vote rules) at 100 %, and for models
    without a classifier head their predictions (KNN K=4) at every fraction. Also each prediction's
    confidence: the softmax probability, or the share of the K=4 neighbours voting for it."""
    from sketchembed.eval.knn import neighbor_labels, vote

    ks = st["ks"]
    preds, confs = {}, {}
    with stages("knn", n_index=len(train), backend=st["backend"]):
        nl = neighbor_labels(train.embeddings, train.labels, tests[1.0].embeddings, max(ks + [KNN_CLASSIFIER_K]),
                             backend=st["backend"], query_block=st["query_block"])
        knn_preds = {k: vote(nl, k, C) for k in ks}
        for f, t in tests.items():
            if has_logits:
                preds[f], confs[f] = t.predictions(), t.conf
                continue
            nf = nl if f == 1.0 else neighbor_labels(train.embeddings, train.labels, t.embeddings, KNN_CLASSIFIER_K,
                                                     backend=st["backend"], query_block=st["query_block"])
            preds[f] = vote(nf, KNN_CLASSIFIER_K, C)
            confs[f] = (nf[:, :KNN_CLASSIFIER_K] == preds[f][:, None]).mean(1).astype(np.float32)
    return preds, confs, knn_preds, nl


def _evaluate(cfg, st, ckpt_path, model, kind, dm, stages) -> dict:
    import torch

    from sketchembed.eval.confusion import confused_pairs
    from sketchembed.eval.knn import study_tie_correct
    from sketchembed.eval.probe import linear_probe
    from sketchembed.eval.report import write_report
    from sketchembed.eval.stats import with_intervals

    classes = dm.class_names
    C = len(classes)
    fractions, ks = st["fractions"], st["ks"]
    len(dm.dataset("test"))  # opens (prepares) test_dir and maps its labels before any heavy work
    device = _device(str(cfg.device))
    model.to(device)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    train, tests, curve_rows = _embed_stage(cfg, st, model, dm, device, stages)
    has_logits = tests[1.0].pred is not None
    preds, confs, knn_preds, nl = _knn_stage(st, train, tests, C, has_logits, stages)
    test = tests[1.0]
    y, p = test.labels, preds[1.0]
    with stages("probe", steps=st["probe"]["steps"]):
        probe = linear_probe(train.embeddings, train.labels, n_classes=C, seed=int(cfg.seed),
                             **{k: v for k, v in st["probe"].items() if v is not None})
        probe_pred = probe.predict(test.embeddings)

    with stages("metrics"):
        m = _metrics(cfg, ckpt_path, kind, dm, train, tests, preds, curve_rows, has_logits)
        for k in ks:
            m[f"test/knn@{k}"] = float((knn_preds[k] == y).mean())
            m[f"test/knn@{k}_study_tie"] = float(study_tie_correct(nl, k, y, C).mean())
        m["test/probe_acc"] = float((probe_pred == y).mean())
        if tuple(getattr(model, "LOSS_KINDS", ())) == ("triplet",):  # no classifier: triplet accuracy
            from sketchembed.metric import triplet_accuracy

            gen = torch.Generator().manual_seed(int(cfg.seed))
            acc, dp, dn = triplet_accuracy(torch.from_numpy(np.asarray(test.embeddings, np.float32)),
                                           torch.from_numpy(y), generator=gen)
            m["test/triplet_acc"], m["test/d_pos"], m["test/d_neg"] = float(acc), float(dp), float(dn)
        cm = np.asarray(m["confusion_matrix"])
        m["confused_pairs"] = confused_pairs(cm, classes, st["confused_pairs"])
        arrays = dict(classes=np.array(classes), fractions=np.array(fractions), labels=y,
                      key_ids=test.key_ids, indices=test.indices, probe=probe_pred, curve_rows=curve_rows,
                      index_key_ids=train.key_ids, index_labels=train.labels, knn_neighbor_labels=nl,
                      **{f"pred@{_tag(f)}": preds[f] for f in fractions},
                      **{f"conf@{_tag(f)}": confs[f] for f in fractions}, **{f"knn@{k}": knn_preds[k] for k in ks})
        # the curve's other fractions are measured on n_curve drawings, not n_test
        m = with_intervals(m, n_overrides={f"test/acc@{_tag(f)}": m["n_curve"]
                                           for f in fractions if f not in (0.5, 1.0)})
        _write_outputs(out, m, arrays)
    _figures(cfg, st, out, dm, train, test, p, m, classes, kind, stages)
    write_report(out, m)
    _log_wandb(cfg, out, m, dm.split_store("test").points, dict(model.hparams))
    (out / "stages.json").write_text(json.dumps(stages.summary(), indent=2))
    _print(m, kind)
    return m


def _metrics(cfg, ckpt_path, kind, dm, train, tests, preds, curve_rows, has_logits) -> dict:
    """The dict of metrics.json, but for the KNN / probe / triplet accuracies (filled by the caller)."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    from sketchembed.eval.checkpoint import file_sha256

    classes = dm.class_names
    test = tests[1.0]
    y = test.labels
    skipped = _skipped(dm)
    m: dict = {"model_kind": kind, "checkpoint": str(ckpt_path), "checkpoint_sha256": file_sha256(ckpt_path),
               "dataset": str(dm.test_dir or dm.root), "index_dataset": str(dm.root),
               "split": "test_dir" if dm.test_dir else "test", "classes": classes,
               "classifier": "logits" if has_logits else f"knn@{KNN_CLASSIFIER_K}",
               "n_train": int(len(train)), "n_test": int(len(test)), "n_evaluated": int(len(test)),
               "n_curve": int(len(curve_rows)),
               "n_skipped": skipped["count"] if dm.test_dir else 0,
               "n_duplicates_dropped": skipped["duplicates"] if dm.test_dir else 0,
               "n_test_in_index": int(np.isin(test.key_ids, train.key_ids).sum())}
    if dm.test_dir:
        m["skipped"] = skipped["items"]
    else:
        m["dataset_skipped_at_prepare"] = skipped["count"]
    if m["n_test_in_index"]:
        log.warning("%d of the %d evaluated drawings are also in the KNN index (train split): their KNN "
                    "neighbours include themselves", m["n_test_in_index"], len(test))
    curve = {}
    for f in sorted(preds):
        yf = y if f in (0.5, 1.0) else y[curve_rows]
        curve[f] = float((preds[f] == yf).mean())
        m[f"test/acc@{_tag(f)}"] = curve[f]
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" on a subset of classes
        warnings.simplefilter("ignore", UserWarning)
        m["test/balanced_acc@50"] = float(balanced_accuracy_score(y, preds[0.5]))
        m["test/balanced_acc@100"] = float(balanced_accuracy_score(y, preds[1.0]))
    cm = confusion_matrix(y, preds[1.0], labels=list(range(len(classes))))
    m["confusion_matrix"] = cm.tolist()
    n_per = cm.sum(1)
    m["per_class_acc@100"] = {c: (float(cm[i, i] / n_per[i]) if n_per[i] else None) for i, c in enumerate(classes)}
    m["per_class_n"] = {c: int(n_per[i]) for i, c in enumerate(classes)}
    m["early_recognition"] = {_tag(f): curve[f] for f in sorted(curve)}
    return m


def _write_outputs(out: Path, m: dict, arrays: dict) -> None:
    """The one place metrics.json (and the predictions it can be recomputed from) is written."""
    np.savez(out / "predictions.npz", **arrays)
    (out / "metrics.json").write_text(json.dumps(_json_safe(m), indent=2, allow_nan=False))


def _figures(cfg, st, out: Path, dm, train, test, pred, m, classes, kind, stages) -> None:
    from sketchembed.eval.knn import search
    from sketchembed.eval.plots import (plot_confusion, plot_early_recognition, plot_neighbors, plot_per_class,
                                        plot_tsne)

    where = "test_dir" if dm.test_dir else "test"
    if st["tsne"]:
        from sketchembed.eval.tsne import tsne_map

        with stages("tsne") as info:
            rng = np.random.default_rng(int(cfg.seed))
            rows = np.arange(len(test))
            if len(rows) > st["tsne_max_points"]:
                rows = np.sort(rng.choice(rows, st["tsne_max_points"], replace=False))
            xy = tsne_map(np.asarray(test.embeddings[rows], np.float32), seed=int(cfg.seed), max_points=None,
                          n_iter=st["tsne_n_iter"], perplexity=st["tsne_perplexity"], n_jobs=st["tsne_n_jobs"])
            info["n"] = len(rows)
            plot_tsne(out / "tsne.png", xy, test.labels[rows], classes, max_legend=min(18, st["max_classes"]),
                      title=f"t-SNE of {len(rows)} {kind} {where} embeddings")
            np.savez(out / "tsne.npz", rows=rows, xy=xy)  # the map's points (rows of predictions.npz)
    with stages("figures"):
        acc = 100 * float((pred == test.labels).mean())
        plot_confusion(out / "confusion.png", test.labels, pred, classes, max_classes=st["max_classes"],
                       title=f"{kind}: {where}, 100 % of the drawing (accuracy {acc:.1f} %, n={len(test)})")
        plot_per_class(out / "per_class.png", np.asarray(m["confusion_matrix"]), classes,
                       n_each=st["per_class_each"])
        curve = {float(f) / 100: v for f, v in m["early_recognition"].items()}
        study = STUDY_CURVE.get(kind)
        plot_early_recognition(out / "early_recognition.png", {f"{kind} (this run)": curve},
                               references={"study (full data, GPU)": study} if study else None)
        n_refs, k = int(cfg.neighbors.n_refs), int(cfg.neighbors.k)
        if n_refs > 0 and k > 0:
            rng = np.random.default_rng(int(cfg.seed))
            refs = np.sort(rng.choice(len(test), min(n_refs, len(test)), replace=False))
            idx, d2 = search(train.embeddings, test.embeddings[refs], min(k, len(train)), backend=st["backend"])
            dist = np.sqrt(d2)
            test_store, train_store = dm.split_store("test"), dm.split_store("train")
            plot_neighbors(out / "neighbors.png",
                           [test_store.points(int(test.indices[r])) for r in refs], [int(test.labels[r]) for r in refs],
                           [[train_store.points(int(train.indices[j])) for j in row] for row in idx],
                           [[int(train.labels[j]) for j in row] for row in idx], classes, distances=dist)


def _log_wandb(cfg: DictConfig, out: Path, m: dict, points, hparams: dict) -> None:
    """Charts, tables and figures to wandb, attached to the training run (sketchembed.eval.dashboard)."""
    from sketchembed.eval.dashboard import log_eval

    log_eval(cfg, out, m, points, hparams)


def _print(m: dict, kind: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from sketchembed.eval.stats import ci_text, interval

    t = Table(title=f"{kind}: {m['dataset']} ({m['n_test']} drawings, {m['n_skipped']} skipped; "
                    f"classifier: {m['classifier']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("95 % interval (Wilson)", justify="right")
    for k, v in m.items():
        if k.startswith("test/") and isinstance(v, float):
            is_acc = "acc" in k or "knn@" in k
            ci = interval(m, k) if is_acc else None
            t.add_row(k, (f"{100 * v:.1f} %" if is_acc else f"{v:.3f}") if math.isfinite(v) else "–",
                      ci_text(ci, " %") if ci else "")
    Console().print(t)


def main() -> None:
    from sketchembed.train.run import hydra_entry

    hydra_entry("eval", evaluate)()


if __name__ == "__main__":
    main()
