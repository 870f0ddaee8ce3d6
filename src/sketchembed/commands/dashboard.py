"""What ``eval.py`` sends to wandb: charts a researcher opens, attached to the training run.

* Where: the training run's id is read from ``<run dir>/wandb_id.txt`` (the checkpoint's run dir,
  see :mod:`sketchembed.wandb_run`). Online, eval resumes that run, so its results land in it.
  Offline (the default), a resumed offline run could not be synced after the training's history,
  so eval opens a *linked* run instead: same group, ``job_type=eval``, named ``<training name>-eval``,
  its config naming the training run id, model kind, backbone, loss, miner and checkpoint.
  ``dashboard.attach=linked|resume`` forces one way.
* What: the scalars as the run's summary (``eval/…``, not one-point charts); the early-recognition
  curve as one line plot; the confusion matrix as an interactive wandb plot; a table of test
  predictions (sketch, true class, predicted class, confidence at 50 % and 100 %) to filter (also
  as an artifact: offline, wandb keeps a table's images only there); the t-SNE map as a table of
  2-D points with their class (and a scatter plot) beside the PNGs; the retrieval metrics (P@1,
  R-precision, MAP@R, NMI, AMI) also as a table with their 95 % intervals and how each was computed;
  ``report.html`` as an HTML panel (and a file of the run).

Everything comes from what eval wrote — ``predictions.npz`` (predictions and their confidences at
every fraction), ``tsne.npz`` (the points of ``tsne.png``) — plus the test drawings' points for the
table's sketches: nothing is embedded or mapped a second time.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import wandb
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageDraw

from sketchembed import metric_keys
from sketchembed.corpus.sketch import points_to_strokes
from sketchembed.eval.report import FIGURES
from sketchembed.eval.retrieval import KEYS as RETRIEVAL_KEYS
from sketchembed.eval.stats import interval
from sketchembed.models.checkpoint import read_checkpoint
from sketchembed.wandb_run import read_train_run

log = logging.getLogger("sketchembed.eval")

DEFAULTS = {"attach": "auto", "table_rows": 200, "image_size": 96}


def settings(cfg: DictConfig) -> dict[str, Any]:
    node = OmegaConf.select(cfg, "dashboard", default=None)
    given = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else {}
    unknown = set(given) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"dashboard.{sorted(unknown)[0]}: unknown key (known: {', '.join(DEFAULTS)})")
    out = {**DEFAULTS, **given}
    if out["attach"] not in ("auto", "linked", "resume"):
        raise ValueError(f"dashboard.attach={out['attach']!r}: choose auto, linked or resume")
    return out


def train_run_dir(ckpt_path: str | Path) -> Path:
    """The training run dir of a checkpoint (``<run>/checkpoints/x.ckpt`` → ``<run>``)."""
    ckpt = Path(ckpt_path).resolve()
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def _wandb_node(cfg: DictConfig) -> DictConfig | None:
    node = OmegaConf.select(cfg, "logger.wandb")
    return node if isinstance(node, DictConfig) and "_target_" in node else None


def _offline(node: DictConfig) -> bool:
    return bool(node.get("offline", True)) or os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled")


def run_config(m: dict, hp: dict, train: dict | None, cfg: DictConfig) -> dict[str, Any]:
    """What identifies an eval run in wandb's run table (model kind, backbone, loss, miner, checkpoint)."""
    def name(part: str):  # a checkpoint's record of a part: {name, args} (its registered or library name)
        rec = hp.get(part)
        return rec.get("name") if isinstance(rec, dict) else None

    return {"model_kind": m.get("model_kind"), "backbone": hp.get("backbone"),
            "loss": name("loss"), "miner": name("miner"),
            "checkpoint": m.get("checkpoint"), "checkpoint_sha256": m.get("checkpoint_sha256"),
            "dataset": m.get("dataset"), "classifier": m.get("classifier"),
            "train_run_id": train["id"] if train else None,
            "eval": OmegaConf.to_container(cfg, resolve=True)}


def log_eval(cfg: DictConfig, out: Path, m: dict, points: Callable[[int], np.ndarray] | None = None,
             hparams: dict | None = None) -> Path | None:
    """Log an evaluation (its ``metrics.json`` dict ``m`` and the files in ``out``) to wandb when a
    wandb logger is configured; returns the wandb run dir, or None. ``points(row)`` gives a test
    drawing's points (the predictions table's sketches; without it there is no table); ``hparams``
    the evaluated model's (read from ``m["checkpoint"]`` when not given)."""
    node = _wandb_node(cfg)
    if node is None:
        return None
    opts = settings(cfg)
    out = Path(out)
    hp = dict(hparams if hparams is not None else read_checkpoint(m["checkpoint"]).raw["hyper_parameters"])
    train = read_train_run(train_run_dir(m["checkpoint"]))
    offline = _offline(node)
    resume = train is not None and (opts["attach"] == "resume" or (opts["attach"] == "auto" and not offline))
    kw: dict[str, Any] = {"project": node.get("project") or "sketchembed", "dir": str(out), "job_type": "eval",
                          "tags": list(node.get("tags") or []) or None,
                          "config": run_config(m, hp, train, cfg)}
    if offline:
        kw["mode"] = "offline"
    if resume:
        kw.update(id=train["id"], resume="allow")
    else:
        base = train["name"] if train else "-".join(str(p) for p in (m.get("model_kind"), hp.get("backbone")) if p)
        kw["name"] = node.get("name") or f"{base}-eval"
        kw["group"] = node.get("group") or (train["group"] if train else "eval")
    run = wandb.init(**{k: v for k, v in kw.items() if v is not None})
    try:
        _log_all(run, cfg, out, m, opts, points)
        run.save(str(out / "metrics.json"), base_path=str(out), policy="now")
        run_dir = Path(run.dir).parent
    finally:
        run.finish()
    return run_dir


def _log_all(run, cfg: DictConfig, out: Path, m: dict, opts: dict, points) -> None:
    # scalars: the run's summary (one value each, in the runs table), not one-point charts
    for k, v in metric_keys.of_split(m, "test").items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            run.summary[metric_keys.key("eval", metric_keys.parse(k).figure)] = float(v)
    for k in ("n_train", "n_test", "n_skipped", "n_test_in_index", "n_retrieval_queries"):
        if k in m:
            run.summary[f"eval/{k}"] = m[k]
    curve = sorted((float(f) / 100.0, float(a)) for f, a in (m.get("early_recognition") or {}).items())
    table = wandb.Table(columns=["fraction of points", "accuracy"], data=[[f, a] for f, a in curve])
    charts = {"eval/early_recognition": wandb.plot.line(table, "fraction of points", "accuracy",
                                                        title=f"{m.get('model_kind')}: early recognition")}
    pred = np.load(out / "predictions.npz", allow_pickle=False)
    classes = [str(c) for c in pred["classes"]]
    labels, p100 = pred["labels"].astype(int), pred["pred@100"].astype(int)
    charts["eval/confusion_matrix"] = wandb.plot.confusion_matrix(
        y_true=labels.tolist(), preds=p100.tolist(), class_names=classes, title="test, 100 % of the drawing")
    for name, _, _ in FIGURES:
        if (out / name).is_file():
            charts[f"eval/{Path(name).stem}_png"] = wandb.Image(str(out / name))
    retrieval = retrieval_table(m)
    if retrieval is not None:
        charts["eval/retrieval"] = retrieval
    if (out / "report.html").is_file():  # self-contained (no script, no external URL): shown as it is
        charts["eval/report"] = wandb.Html((out / "report.html").read_text(encoding="utf-8"), inject=False)
        run.save(str(out / "report.html"), base_path=str(out), policy="now")
    run.log(charts)
    rows = _sample_rows(len(labels), int(opts["table_rows"]), int(cfg.get("seed", 0)))
    if len(rows) and points is not None:
        table = predictions_table(points, pred, rows, classes, opts)
        run.log({"eval/predictions": table})
        # Offline, wandb writes a logged table's images as the word "Image" (wandb issue #4611);
        # an artifact keeps them through `wandb sync`.
        art = wandb.Artifact(f"predictions-{run.id}", type="eval-predictions")
        art.add(table, "predictions")
        run.log_artifact(art)
    if (out / "tsne.npz").is_file():
        t = tsne_table(np.load(out / "tsne.npz", allow_pickle=False), pred, classes)
        run.log({"eval/tsne_points": t,
                 "eval/tsne": wandb.plot.scatter(t, "x", "y", title="t-SNE of test embeddings")})


def retrieval_table(m: dict):
    """The retrieval metrics of ``metrics.json`` as a wandb.Table (value, 95 % interval, n, method);
    None when eval measured none."""
    rows = []
    for name in RETRIEVAL_KEYS.values():
        v = m.get(metric_keys.key("test", name))
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            ci = interval(m, metric_keys.key("test", name))
            rows.append([name, float(v), ci.low if ci else None, ci.high if ci else None, ci.n if ci else None,
                         ci.method if ci else "none"])
    if not rows:
        return None
    return wandb.Table(columns=["metric", "value", "ci95 low", "ci95 high", "n", "interval"], data=rows)


def _sample_rows(n: int, k: int, seed: int) -> np.ndarray:
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, 11])
    return np.sort(rng.choice(n, min(k, n), replace=False))


def sketch_image(points: np.ndarray, size: int = 96, pad: int = 4) -> np.ndarray:
    """A drawing as a small RGB image (black strokes on white) for a table cell."""
    pts = np.asarray(points, dtype=np.float32)
    xy = pts[:, :2]
    lo, span = xy.min(0), max(float(np.ptp(xy, 0).max()), 1.0)
    scale = (size - 2 * pad) / span
    im = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(im)
    for s in points_to_strokes(np.concatenate([(xy - lo) * scale + pad, pts[:, 2:3]], 1)):
        line = [tuple(map(float, p)) for p in s[:, :2]]
        if len(line) == 1:
            line = line * 2
        draw.line(line, fill="black", width=2)
    return np.asarray(im)


def predictions_table(points, pred, rows: np.ndarray, classes: list[str], opts: dict):
    """A wandb.Table, one row per sampled test drawing: sketch, true and predicted class (50 %, 100 %),
    confidences, right/wrong — filterable in the UI ("the misclassified vans")."""
    store_rows = pred["indices"][rows]
    p50, p100 = pred["pred@50"][rows].astype(int), pred["pred@100"][rows].astype(int)
    c50, c100 = pred["conf@50"][rows], pred["conf@100"][rows]
    table = wandb.Table(columns=["sketch", "key_id", "true class", "predicted@50", "confidence@50",
                                 "predicted@100", "confidence@100", "correct@100"])
    for i, r in enumerate(rows):
        y = int(pred["labels"][r])
        table.add_data(wandb.Image(sketch_image(points(int(store_rows[i])), int(opts["image_size"]))),
                       str(int(pred["key_ids"][r])), classes[y], classes[p50[i]], round(float(c50[i]), 4),
                       classes[p100[i]], round(float(c100[i]), 4), bool(p100[i] == y))
    return table


def tsne_table(tsne, pred, classes: list[str]):
    """The map of ``tsne.png`` (eval's ``tsne.npz``) as a table: x, y, class, key_id."""
    table = wandb.Table(columns=["x", "y", "class", "key_id"])
    for (x, y), r in zip(tsne["xy"], tsne["rows"]):
        table.add_data(float(x), float(y), classes[int(pred["labels"][r])], str(int(pred["key_ids"][r])))
    return table
