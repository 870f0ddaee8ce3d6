"""What happens before a run starts: lightning-hydra-template's ``extras`` (conf/train.yaml: the
composed config printed as a tree and saved in the run dir, optional tag enforcement, a warnings
switch), library noise off, the optimized metric checked."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("sketchembed.train")

# Groups shown first in the tree (the rest follow in config order).
TREE_ORDER = ("data", "model", "backbone", "loss", "miner", "callbacks", "logger", "trainer", "paths", "extras")
CONFIG_TREE_FILE = "config_tree.log"


def config_tree(cfg: DictConfig, order: Sequence[str] = TREE_ORDER):
    """A rich Tree of ``cfg`` (one branch per top-level key, YAML inside, unresolved interpolations kept
    as written when they cannot resolve)."""
    import rich.syntax
    import rich.tree

    tree = rich.tree.Tree("config", style="dim", guide_style="dim")
    keys = [k for k in order if k in cfg] + [k for k in cfg if k not in order]
    for key in keys:
        branch = tree.add(str(key), style="bold", guide_style="dim")
        node = cfg[key] if not OmegaConf.is_missing(cfg, key) else "???"
        if isinstance(node, DictConfig):
            try:
                text = OmegaConf.to_yaml(node, resolve=True)
            except Exception:  # e.g. ${hydra:...} outside a run
                text = OmegaConf.to_yaml(node, resolve=False)
        else:
            text = str(node)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", word_wrap=True))
    return tree


def save_tree(tree, path: Path) -> None:
    """Plain-text rendering of a rich renderable (no colour codes), for the run dir."""
    from rich.console import Console

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        Console(file=f, width=120, color_system=None, force_terminal=False).print(tree)


def extras(cfg: DictConfig, output_dir: str | Path | None = None) -> None:
    """Apply ``cfg.extras`` (no-op without it). Raises ValueError for a run without required tags."""
    ex = cfg.get("extras")
    if not ex:
        return
    if ex.get("ignore_warnings"):
        warnings.filterwarnings("ignore")
    if ex.get("enforce_tags"):
        tags = [str(t) for t in (cfg.get("tags") or [])]
        if not [t for t in tags if t != "dev"]:
            raise ValueError("extras.enforce_tags=true: give this run tags, e.g. tags=[ablation,lr] "
                             f"(it has {tags or 'none'})")
    tree = config_tree(cfg)
    if output_dir is not None:
        save_tree(tree, Path(output_dir) / CONFIG_TREE_FILE)
    if ex.get("print_config"):
        from rich.console import Console

        Console().print(tree)


def start_run(cfg: DictConfig) -> None:
    """Before any run of the entry (train, eval): library noise off, the `extras` on rank 0 (config
    tree, tags, warnings), and for training the metric to optimize checked against the model."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from sketchembed.train.console import quiet_libraries
    from sketchembed.train.search import check_optimized_metric

    quiet_libraries()
    if rank_zero_only.rank == 0:
        try:
            from hydra.core.hydra_config import HydraConfig

            out_dir = HydraConfig.get().runtime.output_dir
        except Exception:  # outside a Hydra app
            out_dir = None
        extras(cfg, out_dir)
    if "optimized_metric" in cfg and "model" in cfg:  # training configs
        check_optimized_metric(cfg)
