"""What reaches wandb, read back from the offline run files: the training run's name, group, stored
id and space pictures; eval's charts, tables and figures in a run linked to the training run.

The ``.wandb`` file is read with a small reader of its record log (LevelDB log format, protobuf
``Record`` entries from ``wandb.proto``): wandb 0.31 ships no Python reader for it.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

TINY_TRIPLET = [
    "model=triplet", "backbone=test_resnet", "model.embedding_dim=16", "data.image_size=32", "data.batch_size=8",
    "data.eval_batch_size=32", "data.pk_p=3", "data.pk_k=4", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.num_sanity_val_steps=0",
    "trainer.log_every_n_steps=1", "callbacks.embedding_eval.max_train=48", "callbacks.embedding_eval.probe_epochs=5",
    "callbacks.space_images.every_n_val_epochs=1", "callbacks.space_images.max_train=60",
    "callbacks.space_images.tsne_points=40", "extras.print_config=false", "seed=7",
]


# ------------------------------------------------------------------------------- the .wandb reader
def wandb_records(run_dir: Path) -> list:
    """Every protobuf Record of an offline run's ``run-*.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = next(Path(run_dir).glob("run-*.wandb"))
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a wandb record log"
    block, pos, buf, out = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        if pos + 7 + length > len(data):  # a record still being written
            break
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            pos += block - pos % block if pos % block else 0
            continue
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            out.append(buf + chunk)
    records = []
    for raw in out:
        r = pb.Record()
        r.ParseFromString(raw)
        records.append(r)
    return records


def run_info(run_dir: Path) -> dict:
    """Run id, name, group, job type, config, the last summary and every history key of a run."""
    info = {"config": {}, "summary": {}, "history": {}}
    for r in wandb_records(run_dir):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            info.update(id=r.run.run_id, name=r.run.display_name, group=r.run.run_group, job_type=r.run.job_type)
            for item in r.run.config.update:
                info["config"][item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in r.config.update:
                info["config"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "history":
            for item in r.history.item:
                key = item.key or "/".join(item.nested_key)
                info["history"].setdefault(key, []).append(json.loads(item.value_json))
        elif kind == "summary":
            for item in r.summary.update:
                info["summary"][item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return info


def media_table(run_dir: Path, key: str) -> dict:
    files = sorted(glob.glob(str(run_dir / "files" / "media" / "table" / f"{key}_*.table.json")))
    assert files, f"no table {key} in {run_dir}/files/media/table"
    return json.loads(Path(files[-1]).read_text())


# ------------------------------------------------------------------------------- one trained run
def _env(tmp: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO / "src"), "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "OMP_NUM_THREADS": "1", "WANDB_DATA_DIR": str(tmp / "wandb_data"),
            "WANDB_CACHE_DIR": str(tmp / "wandb_cache"), "WANDB_CONFIG_DIR": str(tmp / "wandb_config")}


@pytest.fixture(scope="module")
def trained_and_evaluated(tmp_path_factory):
    """A tiny triplet training with wandb (offline), then eval.py on its last checkpoint."""
    tmp = tmp_path_factory.mktemp("dash")
    run_dir, eval_dir = tmp / "train", tmp / "eval"
    r = subprocess.run([sys.executable, str(REPO / "train.py"), *TINY_TRIPLET, f"hydra.run.dir={run_dir}"],
                       cwd=REPO, env=_env(tmp), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run([sys.executable, str(REPO / "eval.py"), f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}",
                        "knn.max_train=120", "data.max_eval=60", "probe.steps=20", "tsne.max_points=50",
                        "neighbors.n_refs=2", "dashboard.table_rows=12", f"hydra.run.dir={eval_dir}"],
                       cwd=REPO, env=_env(tmp), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    train_wb = next((run_dir / "wandb").glob("offline-run-*"))
    eval_wb = next((eval_dir / "wandb").glob("offline-run-*"))
    return {"tmp": tmp, "run_dir": run_dir, "eval_dir": eval_dir, "train_wb": train_wb, "eval_wb": eval_wb}


def test_training_run_is_named_grouped_and_stores_its_id(trained_and_evaluated):
    t = trained_and_evaluated
    info = run_info(t["train_wb"])
    assert info["name"] == "triplet-test_resnet-hinge-s7"
    assert info["group"] == "train"
    assert (t["run_dir"] / "wandb_id.txt").read_text().strip() == info["id"]
    assert t["train_wb"].name.endswith(info["id"])


def test_training_logs_the_space_forming(trained_and_evaluated):
    t = trained_and_evaluated
    info = run_info(t["train_wb"])
    # every validation (every_n_val_epochs=1, 2 epochs): a neighbour grid and a t-SNE image
    for key in ("space/neighbors", "space/tsne"):
        assert len(info["history"].get(f"{key}/_type", [])) == 2, sorted(info["history"])
        pngs = list((t["train_wb"] / "files" / "media" / "images" / "space").glob(f"{key.split('/')[1]}_*.png"))
        assert len(pngs) == 2
    assert sorted(p.name for p in (t["run_dir"] / "space").glob("*.png")) == [
        "neighbors_e000.png", "neighbors_e001.png", "tsne_e000.png", "tsne_e001.png"]


def test_eval_run_is_linked_to_the_training_run(trained_and_evaluated):
    t = trained_and_evaluated
    train, ev = run_info(t["train_wb"]), run_info(t["eval_wb"])
    assert ev["job_type"] == "eval" and ev["group"] == train["group"]
    assert ev["name"] == f"{train['name']}-eval" and ev["id"] != train["id"]
    cfg = ev["config"]
    assert cfg["train_run_id"] == train["id"]
    assert (cfg["model_kind"], cfg["backbone"], cfg["loss"], cfg["miner"]) == (
        "triplet", "test_resnet", "hinge", "semihard")
    assert cfg["checkpoint"].endswith("last.ckpt")


def test_eval_charts_tables_and_figures(trained_and_evaluated):
    t = trained_and_evaluated
    metrics = json.loads((t["eval_dir"] / "metrics.json").read_text())
    ev = run_info(t["eval_wb"])
    # scalars in the summary (not ten one-point charts)
    assert ev["summary"]["eval/acc@100"] == pytest.approx(metrics["test/acc@100"])
    assert ev["summary"]["eval/knn@4"] == pytest.approx(metrics["test/knn@4"])
    assert not any(k.startswith("test/") for k in ev["history"])
    # retrieval: scalars, and a table with each figure's interval and how it was computed
    for name in ("p@1", "r_precision", "map@r", "nmi", "ami"):
        assert ev["summary"][f"eval/{name}"] == pytest.approx(metrics[f"test/{name}"]), name
    assert ev["summary"]["eval/n_retrieval_queries"] == metrics["n_retrieval_queries"] == metrics["n_test"]
    ret = media_table(t["eval_wb"], "eval/retrieval")
    assert ret["columns"] == ["metric", "value", "ci95 low", "ci95 high", "n", "interval"]
    rows = {row[0]: row for row in ret["data"]}
    assert list(rows) == ["p@1", "r_precision", "map@r", "nmi", "ami"]
    assert rows["r_precision"][2:4] == pytest.approx(metrics["intervals"]["test/r_precision"]["ci95"])
    assert rows["r_precision"][4] == metrics["n_retrieval_queries"]
    assert rows["p@1"][5] == "wilson" and rows["map@r"][5].startswith("t over") and rows["nmi"][5] == "none"
    # the self-contained report.html: an HTML panel and a file of the run
    assert (t["eval_wb"] / "files" / "report.html").read_text() == (t["eval_dir"] / "report.html").read_text()
    assert list((t["eval_wb"] / "files" / "media" / "html" / "eval").glob("report_*.html"))
    # the early-recognition curve: one line plot over one table of (fraction, accuracy)
    curve = media_table(t["eval_wb"], "eval/early_recognition_table")
    assert curve["columns"] == ["fraction of points", "accuracy"]
    assert [row[1] for row in curve["data"]] == pytest.approx(
        [metrics["early_recognition"][k] for k in sorted(metrics["early_recognition"], key=float)])
    assert len(curve["data"]) == 10
    # confusion matrix as wandb's interactive plot: counts sum to the evaluated drawings
    cm = media_table(t["eval_wb"], "eval/confusion_matrix_table")
    assert sum(row[-1] for row in cm["data"]) == metrics["n_test"]
    # predictions table: sketch, classes, confidences; the images kept in an artifact
    preds = media_table(t["eval_wb"], "eval/predictions")
    assert preds["columns"] == ["sketch", "key_id", "true class", "predicted@50", "confidence@50",
                                "predicted@100", "confidence@100", "correct@100"]
    assert len(preds["data"]) == 12
    classes = set(metrics["classes"])
    for row in preds["data"]:
        assert row[2] in classes and row[3] in classes and row[5] in classes
        assert 0 < row[4] <= 1 and 0 < row[6] <= 1   # KNN vote share of the predicted class
        assert row[7] == (row[2] == row[5])
    staged = list((t["tmp"] / "wandb_data").rglob("*"))
    assert any(p.is_file() and p.read_bytes()[:4] == b"\x89PNG" for p in staged)
    # t-SNE: a table of (x, y, class) for every point of tsne.png, and a scatter plot of it
    pts = media_table(t["eval_wb"], "eval/tsne_points")
    assert pts["columns"] == ["x", "y", "class", "key_id"] and len(pts["data"]) == min(50, metrics["n_test"])
    assert {row[2] for row in pts["data"]} <= classes
    # the three wandb plots (custom charts over the tables above)
    prefix = "_wandb/visualize/"
    charts = {k[len(prefix):]: v["panel_config"]["panelDefId"] for k, v in ev["config"].items() if k.startswith(prefix)}
    assert charts == {"eval/early_recognition": "wandb/line/v0", "eval/confusion_matrix": "wandb/confusion_matrix/v1",
                      "eval/tsne": "wandb/scatter/v0"}
    for name in ("tsne", "confusion", "early_recognition", "neighbors"):
        assert list((t["eval_wb"] / "files" / "media" / "images" / "eval").glob(f"{name}_png_*.png")), name


def test_run_group_of_sweep_members_is_their_multirun():
    from omegaconf import OmegaConf

    from sketchembed.wandb_run import naming

    cfg = OmegaConf.create({"task_name": "train", "seed": 1, "model": {"_target_": "x.LSTMModel"}})
    hydra = OmegaConf.create({"mode": "RunMode.MULTIRUN", "sweep": {"dir": "/o/train/multiruns/2026-01-01_00-00-00"},
                              "job": {"num": 3}, "runtime": {"choices": {"model": "lstm", "loss": "cross_entropy"}}})
    assert naming(cfg, hydra) == {"name": "lstm-cross_entropy-s1-j3", "group": "train/multiruns/2026-01-01_00-00-00"}
    hydra.mode = "RunMode.RUN"
    assert naming(cfg, hydra)["group"] == "train"


def test_dashboard_settings_are_checked():
    from omegaconf import OmegaConf

    from sketchembed.commands.dashboard import settings

    assert settings(OmegaConf.create({}))["attach"] == "auto"
    with pytest.raises(ValueError, match="dashboard.attach='sometimes'"):
        settings(OmegaConf.create({"dashboard": {"attach": "sometimes"}}))
    with pytest.raises(ValueError, match="dashboard.rows: unknown key"):
        settings(OmegaConf.create({"dashboard": {"rows": 3}}))


def test_eval_can_resume_the_training_run_itself(trained_and_evaluated, tmp_path, monkeypatch):
    """dashboard.attach=resume (auto does so online): eval logs under the training run's id."""
    import shutil

    from omegaconf import OmegaConf

    from sketchembed.commands.dashboard import log_eval

    t = trained_and_evaluated
    for k, v in _env(t["tmp"]).items():
        if k.startswith("WANDB_"):
            monkeypatch.setenv(k, v)
    out = tmp_path / "eval"
    shutil.copytree(t["eval_dir"], out, ignore=shutil.ignore_patterns("wandb"))
    m = json.loads((out / "metrics.json").read_text())
    cfg = OmegaConf.create({"logger": {"wandb": {"_target_": "x.WandbLogger", "project": "sketchembed",
                                                 "offline": True}},
                            "dashboard": {"attach": "resume", "table_rows": 0}, "tsne": {"enabled": False},
                            "fractions": [0.5, 1.0], "knn": {"ks": [4], "max_train": 120}, "seed": 42,
                            "batch_size": 64})
    run_dir = log_eval(cfg, out, m)
    from google.protobuf.message import DecodeError

    info = {"summary": {}}
    for _ in range(40):  # wandb's service may still be flushing the file when finish() returns
        try:
            info = run_info(run_dir)
        except DecodeError:
            info = {"summary": {}}
        if "eval/acc@100" in info["summary"]:
            break
        time.sleep(0.5)
    assert info["id"] == (t["run_dir"] / "wandb_id.txt").read_text().strip()
    assert info["summary"]["eval/acc@100"] == pytest.approx(m["test/acc@100"])
