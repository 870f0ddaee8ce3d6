"""`python eval.py ckpt_path=PATH`: evaluates a trained model on the test split (or on every drawing
of ``data.test_dir``) and writes ``metrics.json``, ``predictions.npz``, the figures and ``report.md``
to the run dir (and to wandb when a logger is configured).

Models without a classifier head (the triplet network) are classified by KNN (K=4, the study's
choice for triplet embeddings) over the train split; ``metrics.json`` says which in ``classifier``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("sketchembed.eval")

KNN_CLASSIFIER_K = 4


def _tag(f: float) -> str:
    return f"{round(100 * f):d}"


def _device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _datamodule(cfg: DictConfig, ckpt: dict, ckpt_path: Path, views):
    """A DataModule with the checkpoint's raster settings and sequence statistics."""
    from sketchembed.data.datamodule import SketchDataModule
    from sketchembed.eval.checkpoint import DATA_KEYS, _plain

    dm_hp = _plain(ckpt.get("datamodule_hyper_parameters") or {})
    root = OmegaConf.select(cfg, "data.root") or dm_hp.get("root") or "study10"
    kwargs = {k: dm_hp[k] for k in DATA_KEYS if dm_hp.get(k) is not None}
    kwargs["eval_batch_size"] = int(cfg.batch_size)
    test_dir = OmegaConf.select(cfg, "data.test_dir")
    dm = SketchDataModule(root=str(root), views=tuple(sorted(views)), eval_fractions=(1.0,),
                          num_workers=int(OmegaConf.select(cfg, "data.num_workers") or 0),
                          test_dir=str(test_dir) if test_dir else None, **kwargs)
    state = ckpt.get(SketchDataModule.__qualname__) or ckpt.get(SketchDataModule.__name__)
    if not (isinstance(state, dict) and state.get("seq_std")):
        raise ValueError(f"{ckpt_path}: checkpoint carries no data state (seq_std): not a sketchembed training checkpoint")
    if test_dir:
        dm._seq_std = float(state["seq_std"])  # test_dir classes are mapped by name below
    else:
        dm.load_state_dict({"seq_std": state["seq_std"], "classes": state.get("classes")})
    trained = state.get("classes")
    if trained is not None and list(trained) != dm.class_names:
        raise ValueError(f"{ckpt_path}: trained on classes {list(trained)}, but data.root={root} has {dm.class_names}")
    return dm


def evaluate(cfg: DictConfig) -> dict:
    import torch
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    from sketchembed.eval.checkpoint import file_sha256, load_model, read_checkpoint
    from sketchembed.eval.embed import embed_loader, model_views
    from sketchembed.eval.knn import knn_accuracy, knn_predict
    from sketchembed.eval.probe import linear_probe
    from sketchembed.eval.report import write_report

    ckpt_path = Path(str(cfg.ckpt_path))
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"ckpt_path={ckpt_path}: no such file")
    torch.manual_seed(int(cfg.seed))
    ckpt = read_checkpoint(ckpt_path)
    model = load_model(ckpt_path)
    device = _device(str(cfg.device))
    model.to(device)
    kind = str(model.hparams.get("model_kind", type(model).__name__))
    dm = _datamodule(cfg, ckpt, ckpt_path, model_views(model))
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = dm.class_names
    C = len(classes)

    def embed(split, fraction=1.0, max_items=None):
        return embed_loader(model, dm.loader(split, fraction), rasterizer=dm.rasterizer, device=device,
                            max_items=max_items)

    log.info("embedding the train split (KNN index, probe)")
    train = embed("train", max_items=int(cfg.max_index) if cfg.max_index else None)
    fractions = sorted({float(f) for f in cfg.fractions} | {0.5, 1.0})
    ks = sorted({int(k) for k in cfg.knn_ks} | {KNN_CLASSIFIER_K})
    has_logits = train.logits is not None
    curve, preds, tests = {}, {}, {}
    for f in fractions:
        t = embed("test", f)
        tests[f] = t
        if has_logits:
            p = t.predictions()
        else:
            p = knn_predict(train.embeddings, train.labels, t.embeddings, ks=(KNN_CLASSIFIER_K,),
                            n_classes=C)[KNN_CLASSIFIER_K]
        preds[f] = p
        curve[f] = float((p == t.labels).mean())
    test = tests[1.0]
    y, p = test.labels, preds[1.0]

    m: dict = {"model_kind": kind, "checkpoint": str(ckpt_path), "checkpoint_sha256": file_sha256(ckpt_path),
               "dataset": str(dm.test_dir or dm.root), "classes": classes,
               "classifier": "logits" if has_logits else f"knn@{KNN_CLASSIFIER_K}",
               "n_train": int(len(train)), "n_test": int(len(test))}
    skipped = 0
    if dm.test_dir:
        manifest = getattr(dm.split_store("test"), "manifest", {}) or {}
        skipped = int((manifest.get("skipped") or {}).get("count", 0)) if isinstance(manifest.get("skipped"), dict) else 0
    m["n_skipped"] = skipped
    for f in fractions:
        m[f"test/acc@{_tag(f)}"] = curve[f]
    m["test/balanced_acc@100"] = float(balanced_accuracy_score(y, p))
    m["test/balanced_acc@50"] = float(balanced_accuracy_score(tests[0.5].labels, preds[0.5]))
    knn = knn_accuracy(train.embeddings, train.labels, test.embeddings, y, ks=ks, n_classes=C)
    for k, v in knn.items():
        m[f"test/knn@{k}"] = float(v)
    probe = linear_probe(train.embeddings, train.labels, {"test": (test.embeddings, y)}, n_classes=C,
                         epochs=int(cfg.probe_epochs), seed=int(cfg.seed))
    m["test/probe_acc"] = float(probe.accuracy["test"])
    if kind == "triplet":
        from sketchembed.metric import triplet_accuracy

        acc, dp, dn = triplet_accuracy(torch.from_numpy(test.embeddings), torch.from_numpy(y))
        m["test/triplet_acc"], m["test/d_pos"], m["test/d_neg"] = float(acc), float(dp), float(dn)
    cm = confusion_matrix(y, p, labels=list(range(C)))
    m["confusion_matrix"] = cm.tolist()
    per_class = {}
    for i, c in enumerate(classes):
        n = int(cm[i].sum())
        per_class[c] = float(cm[i, i] / n) if n else None
    m["per_class_acc@100"] = per_class
    m["early_recognition"] = {_tag(f): curve[f] for f in fractions}

    np.savez(out / "predictions.npz", fractions=np.array(fractions), labels=y, key_ids=test.key_ids,
             indices=test.indices, **{f"pred@{_tag(f)}": preds[f] for f in fractions})
    (out / "metrics.json").write_text(json.dumps(m, indent=2))
    _figures(cfg, out, dm, train, test, preds[1.0], curve, classes, kind)
    write_report(out, m)
    _log_wandb(cfg, out, m)
    _print(m, kind)
    return m


def _figures(cfg, out: Path, dm, train, test, pred, curve, classes, kind) -> None:
    from sketchembed.eval.knn import KNNIndex
    from sketchembed.eval.plots import plot_confusion, plot_early_recognition, plot_neighbors, plot_tsne

    plot_confusion(out / "confusion.png", test.labels, pred, classes, title=f"{kind}: test, 100 % of the drawing")
    study = {"lstm": {0.5: 0.777, 1.0: 0.867}, "combined": {0.5: 0.778, 1.0: 0.873}}.get(kind)
    plot_early_recognition(out / "early_recognition.png", {f"{kind} (this run)": curve},
                           references={"study (full data, GPU)": study} if study else None)
    if cfg.tsne and len(test) >= 5:
        from sketchembed.eval.tsne import tsne_map

        rng = np.random.default_rng(int(cfg.seed))
        rows = np.arange(len(test))
        if len(rows) > int(cfg.tsne_max_points):
            rows = np.sort(rng.choice(rows, int(cfg.tsne_max_points), replace=False))
        xy = tsne_map(test.embeddings[rows], seed=int(cfg.seed))
        plot_tsne(out / "tsne.png", xy, test.labels[rows], classes, title=f"t-SNE of {kind} test embeddings")
    n_refs, k = int(cfg.neighbors.n_refs), int(cfg.neighbors.k)
    if n_refs > 0 and k > 0:
        index = KNNIndex(train.embeddings, train.labels, train.key_ids, classes)
        rng = np.random.default_rng(int(cfg.seed))
        refs = rng.choice(len(test), min(n_refs, len(test)), replace=False)
        idx, dist = index.query(test.embeddings[refs], k=min(k, len(train)))
        test_store, train_store = dm.split_store("test"), dm.split_store("train")
        plot_neighbors(out / "neighbors.png",
                       [test_store.points(int(test.indices[r])) for r in refs], [int(test.labels[r]) for r in refs],
                       [[train_store.points(int(train.indices[j])) for j in row] for row in idx],
                       [[int(train.labels[j]) for j in row] for row in idx], classes, distances=dist)


def _log_wandb(cfg: DictConfig, out: Path, m: dict) -> None:
    node = OmegaConf.select(cfg, "logger.wandb")
    if not (isinstance(node, DictConfig) and "_target_" in node):
        return
    import wandb

    kw = {"project": node.get("project", "sketchembed"), "dir": str(out), "job_type": "eval",
          "config": OmegaConf.to_container(cfg, resolve=True)}
    if node.get("offline", True):
        kw["mode"] = "offline"
    run = wandb.init(**kw)
    run.log({k: v for k, v in m.items() if isinstance(v, float) and math.isfinite(v)})
    for name in ("tsne", "neighbors", "confusion", "early_recognition"):
        if (out / f"{name}.png").is_file():
            run.log({name: wandb.Image(str(out / f"{name}.png"))})
    run.finish()


def _print(m: dict, kind: str) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{kind}: {m['dataset']} (test, {m['n_test']} drawings; classifier: {m['classifier']})")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in m.items():
        if k.startswith("test/") and isinstance(v, float):
            t.add_row(k, f"{100 * v:.1f} %" if "d_" not in k else f"{v:.3f}")
    Console().print(t)


def main() -> None:
    from sketchembed.train.run import hydra_entry

    hydra_entry("eval", evaluate)()


if __name__ == "__main__":
    main()
