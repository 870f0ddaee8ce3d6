"""What the studio does, without the web: guess and suggest for a sketch, sample drawings, run the
human test. The web layer (:mod:`sketchembed.studio.app`) only parses requests and calls this.

Everything model-related goes through the code the command line uses: checkpoints through
:mod:`sketchembed.models.checkpoint`, sketches through :func:`sketchembed.eval.embed.embed_points`,
indexes through :mod:`sketchembed.eval.index` / :class:`sketchembed.eval.knn.KNNIndex`, and the human
test through :mod:`sketchembed.eval.human` — so the page shows what `sketchembed suggest` and
`sketchembed human` would.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sketchembed.corpus.embedded import resolve_root
from sketchembed.corpus.store import PreparedDataset
from sketchembed.data.datamodule import SketchDataModule
from sketchembed.data.inputs import InputSettings
from sketchembed.eval.embed import pick_device
from sketchembed.eval.human import Results, sample_items
from sketchembed.eval.index import build_index
from sketchembed.eval.knn import KNN_CLASSIFIER_K, KNNIndex, vote, vote_scores
from sketchembed.eval.stats import wilson
from sketchembed.eval.suggest import check_index_matches
from sketchembed.models.checkpoint import file_sha256, open_checkpoint, trained_root
from sketchembed.studio.budget import Lanes, Work
from sketchembed.studio.drawing import strokes_json
from sketchembed.studio.errors import BadInput
from sketchembed.studio.runtime import OnnxRunner, as_runner, onnx_index
from sketchembed.study import STUDY

TOP_CLASSES = 5
DEFAULT_K = 8
MAX_K = 50
MAX_SESSIONS = 32      # human-test sessions kept in memory (oldest dropped)
MAX_HUMAN_ITEMS = 200
FALLBACK_DATA = "study10"


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def knn_shares(neighbour_labels: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(share, score)``: each class's share of the neighbours, and :func:`knn.vote_scores`'s score
    (more votes first; among equal counts the class whose member is nearest)."""
    lab = np.asarray(neighbour_labels, dtype=np.int64)
    counts = np.bincount(lab, minlength=n_classes).astype(np.float64)
    return counts / max(len(lab), 1), vote_scores(lab[None, :], len(lab), n_classes)[0].astype(np.float64)


@dataclass
class HumanSession:
    items: list            # sketchembed.eval.human.Item
    model_guess: list[str]
    seed: int
    created: float = field(default_factory=time.time)


class Studio:
    """A loaded model, the index its suggestions come from, and the drawings of its dataset."""

    def __init__(self, model, inputs: InputSettings, index, *, ckpt_path: str = "", data=None,
                 results_dir: Path | str = "outputs/studio", vote_k: int = KNN_CLASSIFIER_K):
        self.model = model
        self.inputs = inputs  # the model's input settings (read_inputs): its collate and rasterizer
        self.index = index
        self.data = data
        self.ckpt_path = str(ckpt_path)
        self.results_dir = Path(results_dir)
        self.vote_k = int(vote_k)  # embedding-only models: classes by KNN, with eval's K
        self.runner = as_runner(model, inputs)  # torch or ONNX (sketchembed.studio.runtime)
        self.model_kind = self.runner.model_kind
        self._lock = threading.Lock()  # the human-test sessions
        # forward passes: light ones one at a time (no thread oversubscription on CPUs), a heavy one beside
        self.lanes = Lanes()
        self._sessions: OrderedDict[str, HumanSession] = OrderedDict()
        emb, logits = self._embed([np.array([[0, 0, 0], [255, 255, 1]], dtype=np.int16)])
        self.has_classifier = self.runner.has_classifier
        if emb.shape[1] != index.dim:
            raise ValueError(f"index dimension {index.dim} does not match the model's embeddings ({emb.shape[1]})")
        names = inputs.classes or model.hparams.get("class_names")
        if self.has_classifier:
            if not names or len(names) != logits.shape[1]:
                raise ValueError(f"{ckpt_path}: the checkpoint does not name its {logits.shape[1]} classes")
            self.classes = [str(c) for c in names]
        else:
            self.classes = list(index.classes)

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, ckpt_path, *, index_dir=None, data=None, index_max: int | None = None,
             results_dir="outputs/studio", progress: bool = True, device: str = "cpu", runtime: str = "torch",
             log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Studio:
        """Load the checkpoint (``runtime="onnx"``: an exported file); open ``index_dir`` or build an
        index of the training drawings."""
        if runtime == "onnx":
            runner = OnnxRunner(ckpt_path)
            root = _data_root(data, runner.meta.get("trained_on"), log)
            return cls(runner, runner.inputs, onnx_index(runner, index_dir, root, index_max, log),
                       ckpt_path=str(ckpt_path), data=PreparedDataset(root), results_dir=results_dir)
        dev = pick_device(device)
        model, inputs, _, ckpt = open_checkpoint(ckpt_path, map_location=dev)
        root = _data_root(data, trained_root(ckpt), log)
        sha = file_sha256(ckpt_path)
        if index_dir is not None:
            index = KNNIndex.load(index_dir)
            check_index_matches(index, ckpt_path, sha)
            log(f"index: {len(index)} drawings from {index_dir}")
        else:
            # max_train: a seeded random subset (the training run's seed): the first rows are sorted by class
            seed = (ckpt.get("datamodule_hyper_parameters") or {}).get("seed", 0)
            dm = SketchDataModule.from_inputs(inputs, root, views=tuple(sorted(model.views)), eval_fractions=(1.0,),
                                              max_train=index_max, seed=int(seed or 0))
            log(f"building an index of {len(dm.rows('train'))} training drawings of {dm.split_store('train').root} "
                f"(`sketchembed index build` once and --index DIR skips this)")
            index = build_index(model, dm, "train", ckpt_path=str(Path(ckpt_path).resolve()), ckpt_sha256=sha,
                                device=dev, show_progress=progress)
        if index.points is None:
            raise ValueError(f"{index_dir}: index built with --no-drawings: the studio needs the drawings to show them")
        return cls(model, inputs, index, ckpt_path=str(ckpt_path), data=PreparedDataset(root),
                   results_dir=results_dir)

    # ---- guesses and suggestions ----------------------------------------------------------------
    def _embed(self, drawings: Sequence[np.ndarray], work: Work | None = None):
        with self.lanes.model(sum(len(d) for d in drawings), work):
            return self.runner(drawings)

    def _classes_of(self, logits, nb_idx: np.ndarray) -> list[tuple[str, float, float]]:
        """``(name, p, score)`` for each class of one drawing, best first."""
        if logits is not None:
            p = _softmax(logits.astype(np.float64))
            score = p
            names = self.classes
        else:
            p, score = knn_shares(self.index.labels[nb_idx[: self.vote_k]], len(self.index.classes))
            names = self.index.classes
        order = np.argsort(-score, kind="stable")
        return [(names[i], float(p[i]), float(score[i])) for i in order]

    def predict(self, points: np.ndarray, k: int = DEFAULT_K, work: Work | None = None) -> dict:
        """Top classes and the ``k`` nearest indexed drawings of one simplified ``(N, 3)`` sketch
        (``work``: the request's, :mod:`~sketchembed.studio.budget`)."""
        emb, logits = self._embed([points], work)
        idx, dist = self.index.query(emb, max(k, 0 if self.has_classifier else self.vote_k))
        idx, dist = idx[0], dist[0]
        ranked = self._classes_of(None if logits is None else logits[0], idx)
        neighbours = [{"class": self.index.classes[int(self.index.labels[i])], "distance": float(d),
                       "key_id": str(int(self.index.key_ids[i])), "drawing": strokes_json(self.index.drawing(int(i)))}
                      for i, d in zip(idx[:k], dist[:k])]
        return {"classes": [{"name": n, "p": p} for n, p, _ in ranked[:TOP_CLASSES]], "neighbours": neighbours,
                "by": "classifier" if self.has_classifier else f"knn (k={self.vote_k})",
                "n_points": int(len(points)), "n_strokes": int((points[:, 2] > 0).sum())}

    def guess(self, drawings: Sequence[np.ndarray], work: Work | None = None) -> list[str]:
        """The model's top class for each drawing (batched)."""
        emb, logits = self._embed(drawings, work)
        if logits is not None:
            return [self.classes[int(i)] for i in logits.argmax(1)]
        idx, _ = self.index.query(emb, self.vote_k)
        won = vote(self.index.labels[idx], idx.shape[1], len(self.index.classes))
        return [self.index.classes[int(c)] for c in won]

    # ---- dataset drawings -----------------------------------------------------------------------
    def _require_data(self):
        if self.data is None:
            raise BadInput("no dataset is open (start the studio with --data)", 409)
        return self.data

    def sample(self, split: str = "test", seed: int | None = None) -> dict:
        """One drawing of ``split`` (random, or by ``seed``), for the replay."""
        ds = self._require_data()
        rows = ds.indices(split)
        if len(rows) == 0:
            raise BadInput(f"the {split} split of {ds.root} is empty", 409)
        row = int(np.random.default_rng(seed).choice(rows))
        return {"class": ds.classes[int(ds.labels[row])], "key_id": str(int(ds.key_ids[row])),
                "drawing": strokes_json(np.asarray(ds.points(row)))}

    # ---- the human test -------------------------------------------------------------------------
    def human_start(self, n: int = 20, fractions: Sequence[float] = (0.5, 1.0), seed: int | None = None,
                    work: Work | None = None) -> dict:
        ds = self._require_data()
        if not 1 <= n <= MAX_HUMAN_ITEMS:
            raise BadInput(f"'n' must be in 1..{MAX_HUMAN_ITEMS}, got {n}")
        if not fractions or not all(0 < f <= 1 for f in fractions):
            raise BadInput(f"'fractions' must be in (0, 1], got {list(fractions)}")
        seed = int(secrets.randbelow(2**31)) if seed is None else int(seed)
        items = sample_items(ds, n, fractions, seed, "test")
        guesses = self.guess([it.points for it in items], work)
        sid = secrets.token_hex(8)
        with self._lock:
            self._sessions[sid] = HumanSession(items, guesses, seed)
            while len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)
        return {"session": sid, "seed": seed, "classes": list(ds.classes),
                "items": [{"fraction": it.fraction, "drawing": strokes_json(it.points)} for it in items]}

    def human_finish(self, session: str, answers: Sequence[str | None]) -> dict:
        """Score the answers (class names, ``None`` for skipped) beside the model; save them as JSON."""
        with self._lock:
            s = self._sessions.get(session)
        if s is None:
            raise BadInput(f"unknown or finished human-test session {str(session)[:40]!r}", 404)
        classes = list(self.data.classes)
        if len(answers) != len(s.items):
            raise BadInput(f"'answers' has {len(answers)} entries for {len(s.items)} drawings")
        bad = [a for a in answers if a is not None and a not in classes]
        if bad:
            raise BadInput(f"'answers' holds {str(bad[0])[:40]!r}, not a class of this dataset")
        with self._lock:
            if self._sessions.pop(session, None) is None:  # finished meanwhile by another request
                raise BadInput(f"unknown or finished human-test session {str(session)[:40]!r}", 404)
        answered = [(it, a, g) for it, a, g in zip(s.items, answers, s.model_guess) if a is not None]
        human, model = Results(), Results()
        for it, a, g in answered:
            human.add(it, classes.index(a))
            model.add(it, classes.index(g) if g in classes else -1)
        rows = [{"fraction": f, "n": human.shown[f], "human": human.correct[f] / human.shown[f],
                 "human_ci95": list(wilson(human.correct[f], human.shown[f])),
                 "model": model.correct[f] / model.shown[f],
                 "model_ci95": list(wilson(model.correct[f], model.shown[f]))} for f in sorted(human.shown)]
        records = [{**rec, "label_name": classes[it.label], "guess_name": a, "model_guess_name": g}
                   for rec, (it, a, g) in zip(human.answers, answered)]
        out = {**human.metrics(), **{k.replace("human/", "model/"): v for k, v in model.metrics().items()},
               "rows": rows, "answers": records, "skipped": len(s.items) - len(answered), "classes": classes,
               "data": str(self.data.root), "split": "test", "seed": s.seed, "ckpt": self.ckpt_path,
               "model_kind": self.model_kind}
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / f"human-{time.strftime('%Y%m%d-%H%M%S')}-{session}.json"
        path.write_text(json.dumps(out, indent=2))
        return {"rows": rows, "saved": str(path), "study_human": STUDY["human"]["acc"]}

    def health(self) -> dict:
        return {"status": "ok", "model_kind": self.model_kind, "classes": list(self.classes),
                "by": "classifier" if self.has_classifier else f"knn (k={self.vote_k})",
                "index": {"n": len(self.index), "classes": len(self.index.classes)},
                "data": None if self.data is None else str(self.data.root)}


def _data_root(data, own: str | None, log) -> Path:
    """The dataset to show drawings from: ``data``, else the checkpoint's own, else the embedded set."""
    if data is not None:
        root = resolve_root(data)
        if not (root / "manifest.json").is_file():
            raise FileNotFoundError(f"--data {data}: not a prepared dataset (no manifest.json)")
        return root
    if own:
        try:
            root = resolve_root(own)
            if (root / "manifest.json").is_file():
                return root
        except (ValueError, FileNotFoundError):
            pass
        log(f"the checkpoint's data {own} is not here: using the embedded {FALLBACK_DATA} set (--data to choose)")
    return resolve_root(FALLBACK_DATA)
