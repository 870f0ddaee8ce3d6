"""`python eval.py ckpt_path=PATH`: evaluates a trained model on the test split (or on every drawing
of ``data.test_dir``) and writes ``metrics.json``, ``predictions.npz``, the figures and ``report.md``
to the run dir (and to wandb when a logger is configured).

* The KNN index and the linear probe are built on the train split of the dataset the checkpoint was
  trained on (``max_index`` caps it with a random subset, never with the first rows, which are
  sorted by class).
* Models without a classifier head (the triplet network) are classified by KNN (K=4, the study's
  choice for triplet embeddings) over that index; ``metrics.json`` says which in ``classifier``.
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

from sketchembed.messages import short_list

log = logging.getLogger("sketchembed.eval")

KNN_CLASSIFIER_K = 4
RASTER_KEYS = ("image_size", "line_width", "padding", "max_snapshots")


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
    from sketchembed.data.prepare import SUFFIXES, discover

    path = Path(test_dir)
    if not path.exists():
        raise FileNotFoundError(f"data.test_dir={path}: no such folder")
    if (path / "manifest.json").is_file():
        return  # a prepared dataset: the DataModule maps its classes by name (and names strangers)
    if not path.is_dir():
        raise ValueError(f"data.test_dir={path}: not a folder (expected a folder of per-class files "
                         f"{'/'.join(SUFFIXES)} or a prepared dataset)")
    found = discover([path])
    if not found:
        raise ValueError(f"data.test_dir={path}: no per-class files (<class>{', <class>'.join(SUFFIXES)}) in it")
    unknown = {c: files for c, files in found.items() if c not in set(classes)}
    if unknown:
        names = short_list(f for c in sorted(unknown) for f in unknown[c])
        raise ValueError(f"data.test_dir={path}: {names}: class(es) [{short_list(sorted(unknown))}] unknown to the model "
                         f"(trained on: {short_list(classes)})")


def _datamodule(cfg: DictConfig, ckpt: dict, ckpt_path: Path, views):
    """A DataModule over the checkpoint's dataset with its raster settings and sequence statistics."""
    from sketchembed.data.datamodule import SketchDataModule
    from sketchembed.eval.checkpoint import _plain

    state = ckpt.get(SketchDataModule.__qualname__) or ckpt.get(SketchDataModule.__name__)
    if not (isinstance(state, dict) and state.get("seq_std")):
        raise ValueError(f"{ckpt_path}: checkpoint carries no data state (seq_std): not a sketchembed "
                         "training checkpoint")
    dm_hp = _plain(ckpt.get("datamodule_hyper_parameters") or {})
    root = _sel(cfg, "data.root") or dm_hp.get("root") or "study10"
    kwargs = {k: dm_hp[k] for k in RASTER_KEYS if dm_hp.get(k) is not None}
    kwargs.update({k: _sel(cfg, f"data.{k}") for k in RASTER_KEYS if _sel(cfg, f"data.{k}") is not None})
    max_index, max_eval = _sel(cfg, "max_index"), _sel(cfg, "data.max_eval")
    test_dir = _sel(cfg, "data.test_dir")
    dm = SketchDataModule(root=str(root), views=tuple(sorted(views)), eval_fractions=(1.0,),
                          eval_batch_size=int(cfg.batch_size), num_workers=int(_sel(cfg, "data.num_workers", 0)),
                          seed=int(cfg.seed), max_train=int(max_index) if max_index else None,
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


def _balanced(cm: np.ndarray) -> float:
    """Mean recall over the classes present in the evaluated drawings (sklearn's definition)."""
    n = cm.sum(1)
    present = n > 0
    return float(np.mean(np.diag(cm)[present] / n[present])) if present.any() else float("nan")


def _json_safe(obj):
    """NaN/inf (e.g. triplet accuracy with a single class) → null: metrics.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def evaluate(cfg: DictConfig) -> dict:
    import torch

    from sketchembed.eval.checkpoint import load_model, read_checkpoint
    from sketchembed.eval.embed import model_views

    ckpt_path = _ckpt_path(cfg)
    fractions = sorted({float(f) for f in cfg.fractions} | {0.5, 1.0})
    if not all(0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must be in (0, 1], got {list(cfg.fractions)}")
    ks = sorted({int(k) for k in cfg.knn_ks})
    if not ks or ks[0] < 1:
        raise ValueError(f"knn_ks must be integers >= 1, got {list(cfg.knn_ks)}")
    torch.manual_seed(int(cfg.seed))
    ckpt = read_checkpoint(ckpt_path)
    model = load_model(ckpt_path)
    kind = str(model.hparams.get("model_kind", type(model).__name__))
    dm = _datamodule(cfg, ckpt, ckpt_path, model_views(model))
    try:
        return _evaluate(cfg, ckpt_path, model, kind, dm, fractions, ks)
    finally:
        dm.teardown()


def _evaluate(cfg, ckpt_path, model, kind, dm, fractions, ks) -> dict:
    import torch
    from sklearn.metrics import confusion_matrix

    from sketchembed.eval.checkpoint import file_sha256
    from sketchembed.eval.embed import embed_loader
    from sketchembed.eval.knn import knn_predict
    from sketchembed.eval.probe import linear_probe
    from sketchembed.eval.report import write_report

    classes = dm.class_names
    C = len(classes)
    n_test = len(dm.dataset("test"))  # opens (prepares) test_dir and maps its labels before any heavy work
    device = _device(str(cfg.device))
    model.to(device)
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    def embed(split, fraction=1.0):
        return embed_loader(model, dm.loader(split, fraction), rasterizer=dm.rasterizer, device=device)

    log.info("embedding %d train drawings (KNN index, probe)", len(dm.rows("train")))
    train = embed("train")
    if len(train) < max(ks + [KNN_CLASSIFIER_K]):
        raise ValueError(f"{dm.root}: {len(train)} train drawings, too few for KNN with K={max(ks)}")
    has_logits = train.logits is not None
    if has_logits and train.logits.shape[1] != C:
        raise ValueError(f"{ckpt_path}: the classifier has {train.logits.shape[1]} outputs, {dm.root} has {C} classes")
    log.info("embedding %d test drawings at %d fractions", n_test, len(fractions))
    curve, preds = {}, {}
    order = test50 = None
    for f in fractions:  # ascending: 1.0 comes last
        t = embed("test", f)
        if order is None:
            order = t.indices
        elif not np.array_equal(t.indices, order):
            raise RuntimeError("the test drawings came in another order at another fraction")
        if has_logits:
            p = t.predictions()
        else:
            p = knn_predict(train.embeddings, train.labels, t.embeddings, ks=(KNN_CLASSIFIER_K,),
                            n_classes=C)[KNN_CLASSIFIER_K]
        preds[f] = p
        curve[f] = float((p == t.labels).mean())
        if f == 0.5:
            test50 = t
    test = t
    y, p = test.labels, preds[1.0]
    cm = confusion_matrix(y, p, labels=list(range(C)))
    cm50 = confusion_matrix(test50.labels, preds[0.5], labels=list(range(C)))
    skipped = _skipped(dm)

    m: dict = {"model_kind": kind, "checkpoint": str(ckpt_path), "checkpoint_sha256": file_sha256(ckpt_path),
               "dataset": str(dm.test_dir or dm.root), "index_dataset": str(dm.root),
               "split": "test_dir" if dm.test_dir else "test", "classes": classes,
               "classifier": "logits" if has_logits else f"knn@{KNN_CLASSIFIER_K}",
               "n_train": int(len(train)), "n_test": int(len(test)), "n_evaluated": int(len(test)),
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
    for f in fractions:
        m[f"test/acc@{_tag(f)}"] = curve[f]
    m["test/balanced_acc@50"] = _balanced(cm50)
    m["test/balanced_acc@100"] = _balanced(cm)
    knn_preds = knn_predict(train.embeddings, train.labels, test.embeddings, ks=ks, n_classes=C)
    for k in ks:
        m[f"test/knn@{k}"] = float((knn_preds[k] == y).mean())
    probe = linear_probe(train.embeddings, train.labels, {"test": (test.embeddings, y)}, n_classes=C,
                         epochs=int(cfg.probe_epochs), seed=int(cfg.seed))
    m["test/probe_acc"] = float(probe.accuracy["test"])
    probe_pred = probe.predict(test.embeddings)
    if getattr(model, "LOSS_KIND", None) == "triplet" or kind == "triplet":
        from sketchembed.metric import triplet_accuracy

        gen = torch.Generator().manual_seed(int(cfg.seed))
        acc, dp, dn = triplet_accuracy(torch.from_numpy(test.embeddings), torch.from_numpy(y), generator=gen)
        m["test/triplet_acc"], m["test/d_pos"], m["test/d_neg"] = float(acc), float(dp), float(dn)
    m["confusion_matrix"] = cm.tolist()
    n_per = cm.sum(1)
    m["per_class_acc@100"] = {c: (float(cm[i, i] / n_per[i]) if n_per[i] else None) for i, c in enumerate(classes)}
    m["per_class_n"] = {c: int(n_per[i]) for i, c in enumerate(classes)}
    m["early_recognition"] = {_tag(f): curve[f] for f in fractions}

    np.savez(out / "predictions.npz", classes=np.array(classes), fractions=np.array(fractions), labels=y,
             key_ids=test.key_ids, indices=test.indices, probe=probe_pred,
             index_key_ids=train.key_ids, index_labels=train.labels,
             **{f"pred@{_tag(f)}": preds[f] for f in fractions}, **{f"knn@{k}": knn_preds[k] for k in ks})
    (out / "metrics.json").write_text(json.dumps(_json_safe(m), indent=2, allow_nan=False))
    _figures(cfg, out, dm, train, test, p, curve, classes, kind)
    write_report(out, m)
    _log_wandb(cfg, out, m)
    _print(m, kind)
    return m


def _figures(cfg, out: Path, dm, train, test, pred, curve, classes, kind) -> None:
    from sketchembed.eval.knn import KNNIndex
    from sketchembed.eval.plots import plot_confusion, plot_early_recognition, plot_neighbors, plot_tsne

    where = "test_dir" if dm.test_dir else "test"
    plot_confusion(out / "confusion.png", test.labels, pred, classes,
                   title=f"{kind}: {where}, 100 % of the drawing (accuracy {100 * float((pred == test.labels).mean()):.1f} %, "
                         f"n={len(test)})")
    study = {"lstm": {0.5: 0.777, 1.0: 0.867}, "combined": {0.5: 0.778, 1.0: 0.873}}.get(kind)
    plot_early_recognition(out / "early_recognition.png", {f"{kind} (this run)": curve},
                           references={"study (full data, GPU)": study} if study else None)
    if cfg.tsne:
        from sketchembed.eval.tsne import tsne_map

        rng = np.random.default_rng(int(cfg.seed))
        rows = np.arange(len(test))
        if len(rows) > int(cfg.tsne_max_points):
            rows = np.sort(rng.choice(rows, int(cfg.tsne_max_points), replace=False))
        xy = tsne_map(test.embeddings[rows], seed=int(cfg.seed), max_points=None)
        plot_tsne(out / "tsne.png", xy, test.labels[rows], classes,
                  title=f"t-SNE of {len(rows)} {kind} {where} embeddings")
    n_refs, k = int(cfg.neighbors.n_refs), int(cfg.neighbors.k)
    if n_refs > 0 and k > 0:
        index = KNNIndex(train.embeddings, train.labels, train.key_ids, classes)
        rng = np.random.default_rng(int(cfg.seed))
        refs = np.sort(rng.choice(len(test), min(n_refs, len(test)), replace=False))
        idx, dist = index.query(test.embeddings[refs], k=min(k, len(train)))
        test_store, train_store = dm.split_store("test"), dm.split_store("train")
        plot_neighbors(out / "neighbors.png",
                       [test_store.points(int(test.indices[r])) for r in refs], [int(test.labels[r]) for r in refs],
                       [[train_store.points(int(train.indices[j])) for j in row] for row in idx],
                       [[int(train.labels[j]) for j in row] for row in idx], classes, distances=dist)


def _log_wandb(cfg: DictConfig, out: Path, m: dict) -> None:
    """Charts, tables and figures to wandb, attached to the training run (sketchembed.eval.dashboard)."""
    from sketchembed.eval.dashboard import log_eval

    log_eval(cfg, out, m)


def _print(m: dict, kind: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{kind}: {m['dataset']} ({m['n_test']} drawings, {m['n_skipped']} skipped; "
                    f"classifier: {m['classifier']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in m.items():
        if k.startswith("test/") and isinstance(v, float):
            is_acc = "acc" in k or "knn@" in k
            t.add_row(k, (f"{100 * v:.1f} %" if is_acc else f"{v:.3f}") if math.isfinite(v) else "–")
    Console().print(t)


def main() -> None:
    from sketchembed.train.run import hydra_entry

    hydra_entry("eval", evaluate)()


if __name__ == "__main__":
    main()
