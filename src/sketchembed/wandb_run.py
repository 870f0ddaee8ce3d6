"""How a sketchembed run appears in wandb: its name (model–backbone–loss–seed), its group (the
multirun a sweep member belongs to) and its id, stored in the run dir so that evaluation (and a
resumed training) can find the run again.

Contract with the rest of the code: ``<run dir>/wandb_id.txt`` holds the training run's wandb id
(one line). ``eval.py`` reads it to attach its results to that run; a resumed training passes it as
``logger.wandb.id`` so wandb continues the same run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

ID_FILE = "wandb_id.txt"


def run_name(cfg: DictConfig, choices: Mapping[str, str], job_num: int | None = None) -> str:
    """``triplet-vgg16-hinge-s42`` (``lstm-cross_entropy-s42``: no backbone for the LSTM); sweep
    members get their job number (``…-j3``)."""
    model = choices.get("model") or str(OmegaConf.select(cfg, "model._target_", default="model")).rsplit(".", 1)[-1]
    backbone = OmegaConf.select(cfg, "model.backbone.name", default=None) if _has_backbone(cfg) else None
    parts = [model, backbone, choices.get("loss"), f"s{OmegaConf.select(cfg, 'seed', default=0)}"]
    name = "-".join(str(p) for p in parts if p)
    return f"{name}-j{job_num}" if job_num is not None else name


def _has_backbone(cfg: DictConfig) -> bool:
    node = OmegaConf.select(cfg, "model.backbone", default=None)
    return isinstance(node, (DictConfig, dict))


def run_group(task_name: str, hydra_cfg: Any | None) -> str:
    """Sweep members share their multirun dir as group (``train/multiruns/2026-…``); a single run
    is grouped by its task (``train``)."""
    mode = str(OmegaConf.select(hydra_cfg, "mode", default="")) if hydra_cfg is not None else ""
    if mode.endswith("MULTIRUN"):
        sweep = Path(str(OmegaConf.select(hydra_cfg, "sweep.dir")))
        return f"{task_name}/{sweep.parent.name}/{sweep.name}"
    return task_name


def naming(cfg: DictConfig, hydra_cfg: Any | None) -> dict[str, str]:
    """``{"name": …, "group": …}`` for a training run composed with ``hydra_cfg`` (a running
    HydraConfig or a run dir's ``.hydra/hydra.yaml``)."""
    choices = {}
    job_num = None
    if hydra_cfg is not None:
        choices = {str(k): str(v) for k, v in (OmegaConf.select(hydra_cfg, "runtime.choices") or {}).items()
                   if v is not None}
        if str(OmegaConf.select(hydra_cfg, "mode", default="")).endswith("MULTIRUN"):
            job_num = OmegaConf.select(hydra_cfg, "job.num", default=None)
    task = str(OmegaConf.select(cfg, "task_name", default="train"))
    return {"name": run_name(cfg, choices, job_num), "group": run_group(task, hydra_cfg)}


def read_run_id(run_dir: str | Path) -> str | None:
    """The wandb id a training run stored in its run dir, or None."""
    path = Path(run_dir) / ID_FILE
    if not path.is_file():
        return None
    text = path.read_text().strip()
    return text or None


def read_train_run(run_dir: str | Path) -> dict[str, Any] | None:
    """What eval needs to attach to a training run: its id, name, group and composed config."""
    run_dir = Path(run_dir)
    run_id = read_run_id(run_dir)
    cfg_file, hydra_file = run_dir / ".hydra" / "config.yaml", run_dir / ".hydra" / "hydra.yaml"
    if run_id is None or not cfg_file.is_file():
        return None
    cfg = OmegaConf.load(cfg_file)
    hydra_cfg = OmegaConf.load(hydra_file).get("hydra") if hydra_file.is_file() else None
    return {"id": run_id, "cfg": cfg, **naming(cfg, hydra_cfg)}


class WandbLogger(_LightningWandbLogger):
    """Lightning's WandbLogger that names and groups the run from the composed config (when
    ``name``/``group`` are null) and writes its id to ``<save_dir>/wandb_id.txt``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Lightning passes anonymous=None, which wandb >= 0.19 warns about on every run.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    def set_naming(self, name: str | None = None, group: str | None = None) -> None:
        """Fill name/group left null in the config (before the experiment starts)."""
        if name and not self._wandb_init.get("name"):
            self._wandb_init["name"] = self._name = name
        if group and not self._wandb_init.get("group"):
            self._wandb_init["group"] = group

    @property
    def experiment(self):
        run = super().experiment
        self._store_id(run)
        return run

    @rank_zero_only
    def _store_id(self, run) -> None:
        if getattr(self, "_id_stored", False) or not self.save_dir:
            return
        run_id = getattr(run, "id", None)
        if run_id:
            Path(self.save_dir).mkdir(parents=True, exist_ok=True)
            (Path(self.save_dir) / ID_FILE).write_text(f"{run_id}\n")
            self._id_stored = True
