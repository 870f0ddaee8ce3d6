"""How a Hydra command runs (``train.py``/``sketchembed-train``, ``eval.py``/``sketchembed-eval``): where
its configs are (the checkout's ``conf/``, else the copy installed in the package), what happens
before the run (library noise off, lightning-hydra-template's ``extras``), and a misconfiguration
ending in one line on stderr with exit code 2 instead of a traceback.

Shared by ``train`` and ``eval``, so neither command imports the other.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import re
import shutil
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
import rich.syntax
import rich.tree
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from sketchembed.corpus.sketch import DataFormatError
from sketchembed.messages import ConfigError, short_list

# Errors of bad input (config, data, paths): one line and exit 2. A ValueError may also be a bug,
# so the stack of every one of them is kept in the run dir (error.log).
INPUT_ERRORS = (ConfigError, DataFormatError, FileNotFoundError, ValueError, MisconfigurationException)

# Groups shown first in the config tree (the rest follow in config order).
TREE_ORDER = ("data", "model", "backbone", "loss", "miner", "callbacks", "logger", "trainer", "paths", "extras")
CONFIG_TREE_FILE = "config_tree.log"
ERROR_FILE = "error.log"
# What a run dir holds before the run does anything (Hydra's record, the config tree, the error):
# a run refused with only these is set aside from the real runs (set_aside_refused).
RECORD_ONLY = frozenset({".hydra", "run.log", CONFIG_TREE_FILE, ERROR_FILE})

# Messages from libraries that carry nothing for a sketchembed user.
NOISY_WARNINGS = (
    r".*isinstance\(treespec, LeafSpec\).*",         # lightning's pytree shim on torch >= 2.10
)
NOISY_LOG_TEXT = ("litlogger", "litmodels")           # Lightning's product tips


def hydra_config() -> DictConfig | None:
    """The running Hydra app's own config (``hydra.*``); None outside one (tests composing by hand)."""
    return HydraConfig.get() if HydraConfig.initialized() else None


def hydra_choices() -> dict[str, str]:
    """The option picked in each config group (model=…, loss=…), for messages and run names."""
    hc = hydra_config()
    if hc is None:
        return {}
    return {k: str(v) for k, v in hc.runtime.choices.items() if v is not None}


def run_dir() -> Path | None:
    """The running Hydra app's output dir; None outside one."""
    hc = hydra_config()
    out = None if hc is None else OmegaConf.select(hc, "runtime.output_dir")
    return None if out is None else Path(out)


def _checkout_conf() -> Path | None:
    """``conf/`` of a checkout: in the working directory or above this file (not the installed
    ``sketchembed/conf`` beside it)."""
    here = Path(__file__).resolve()
    for parent in [Path.cwd(), *here.parents[1:]]:
        if (parent / "conf" / "train.yaml").is_file():
            return parent / "conf"
    return None


def conf_dir() -> str:
    """``conf/`` of the checkout (the working directory or one above this file), else the configs
    installed with the package (``sketchembed/conf``, mapped from the checkout's ``conf/`` by
    pyproject.toml), so installed entry points run from any directory."""
    found = _checkout_conf()
    if found is None:
        installed = importlib.resources.files("sketchembed") / "conf"
        if not (installed / "train.yaml").is_file():
            raise FileNotFoundError("conf/train.yaml not found: run from a sketchembed checkout or "
                                    "install the package (pip install sketchembed)")
        found = Path(str(installed))
    return str(found)


# ---- before the run -------------------------------------------------------------------------
class _DropText(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(t in msg for t in NOISY_LOG_TEXT)


def quiet_libraries() -> None:
    """Remove the noise a user would see on every run. Idempotent; call after logging is set up.

    * Lightning adds its own console handler when imported before Hydra configured logging, so each
      INFO line came twice: its handlers go, its records reach the root (Hydra's) handlers once.
    * Lightning's product tips, the LeafSpec deprecation, optuna's plugin chatter, openTSNE's INFO
      lines: dropped.
    """
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                lg.removeHandler(h)
        lg.propagate = True
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        lg = logging.getLogger(name)
        if not any(isinstance(f, _DropText) for f in lg.filters):
            lg.addFilter(_DropText())
    for pattern in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    # optuna logs every trial and the sampler's experimental-feature notes at INFO/WARNING; the
    # sweeper's own lines (one per trial and the best result) are kept.
    logging.getLogger("optuna").setLevel(logging.ERROR)
    # openTSNE announces its gradient method at INFO on every map (the space pictures, eval's t-SNE)
    logging.getLogger("openTSNE").setLevel(logging.WARNING)


def quiet_sweeper(argv: list[str]) -> None:
    """Before Hydra starts: an Optuna sweep (``hparams_search=optuna``) would print optuna's own
    coloured INFO lines beside the sweeper's; optuna sets its level when first imported, so it is set
    here, before the sweeper imports it."""
    if not any("optuna" in a for a in argv):
        return
    import optuna  # lazy: importing optuna costs seconds, and only sweeps use it

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def config_tree(cfg: DictConfig, order: Sequence[str] = TREE_ORDER):
    """A rich Tree of ``cfg`` (one branch per top-level key, YAML inside, unresolved interpolations kept
    as written when they cannot resolve)."""
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        Console(file=f, width=120, color_system=None, force_terminal=False).print(tree)


def extras(cfg: DictConfig, output_dir: str | Path | None = None) -> None:
    """Apply ``cfg.extras`` (no-op without it): the composed config as a tree (saved in the run dir,
    printed with ``print_config``), tag enforcement, a warnings switch. Raises ValueError for a run
    without required tags."""
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
        Console().print(tree)


def start_run(cfg: DictConfig) -> None:
    """Before any run of an entry: library noise off, the ``extras`` on rank 0."""
    quiet_libraries()
    if rank_zero_only.rank == 0:
        extras(cfg, run_dir())


def _shown(path: Path) -> str:
    """A path as the user can paste it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def end_line(out: str | Path, outputs: Sequence[tuple[str, Sequence[str | Path | None]]]) -> str:
    """The last line of a run: its folder and the files to open next (``outputs``: label, paths;
    paths that were not written are left out), e.g.
    ``run folder: outputs/eval/runs/X  report: outputs/eval/runs/X/report.md, …/report.html``."""
    parts = [f"run folder: {_shown(Path(out))}"]
    for label, paths in outputs:
        found = [_shown(Path(p)) for p in paths if p and Path(p).is_file()]
        if found:
            parts.append(f"{label}: {', '.join(found)}")
    return "  ".join(parts)


# ---- errors ---------------------------------------------------------------------------------
def _unwrap(e: BaseException) -> BaseException:
    while e.__cause__ is not None and type(e).__name__ == "InstantiationException":
        e = e.__cause__
    return e


def check_new_keys(config_name: str) -> None:
    """Refuse a top-level key the command line adds (``+foo=1``): no part of the program reads it, so
    the run would go on as if it had not been given (a mistyped ``+seed=1`` → ``+sed=1``). A key
    added inside a group (``+data.foo=1``, ``+callbacks.NAME={…}``) is checked by the class it goes
    to; a group option (``+experiment=…``) is not a key."""
    hc = hydra_config()
    if hc is None:
        return
    groups = {re.split(r"[/@]", str(g))[0] for g in hc.runtime.choices}
    primary = Path(conf_dir()) / f"{config_name}.yaml"
    known = ({str(k) for k in OmegaConf.load(primary) if k != "defaults"} if primary.is_file() else set()) | groups
    for override in hc.overrides.task:
        key = str(override).split("=", 1)[0]
        if not key.startswith("+") or re.search(r"[./@\[]", key.lstrip("+")) or key.lstrip("+") in known:
            continue
        raise ConfigError(f"{override}: {config_name}.py has no setting {key.lstrip('+')!r} (its top-level "
                          f"settings: {short_list(sorted(known - {'hydra'}), 30)}); a new key goes inside "
                          "a group, e.g. +callbacks.NAME={…}")


_QUOTED = re.compile(r"'([^']+)'")


def composition_error(e: Exception) -> str:
    """One line for a command line Hydra cannot compose a config from, naming the key or group."""
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and e.options:
        group, _, option = str(e.missing_cfg_file).rpartition("/")
        return f"{group}={option}: no such option (conf/{group}/ has: {short_list(e.options, 30)})"
    text = str(e).split("Config search path:", 1)[0]
    text = " ".join(text.split())
    if e.__cause__ is not None:
        text += f" ({str(e.__cause__).splitlines()[0].strip()})"
    if isinstance(e, OverrideParseException):
        return f"the overrides cannot be parsed: {text}"
    key = _QUOTED.search(text)
    return f"{key.group(1)}: {text}" if key else text


def _save_traceback(e: BaseException) -> str | None:
    """Write ``e``'s traceback to ``error.log`` in the run dir; its path, or None outside a run."""
    out = run_dir()
    if out is None:
        return None
    try:
        path = out / ERROR_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(traceback.format_exception(e)))
        return str(path)
    except OSError:
        return None


def set_aside_refused(out: Path) -> Path:
    """Where a refused run's record ends: a run dir ``<task>/runs/<name>`` that holds only its record
    (``RECORD_ONLY``) moves to ``<task>/refused/<name>``, so ``runs/`` lists only runs that ran; any
    other dir (a resumed run's, a sweep job's, one named by ``hydra.run.dir``) stays where it is."""
    if out.parent.name != "runs" or rank_zero_only.rank != 0:
        return out
    try:
        if not out.is_dir() or any(p.name not in RECORD_ONLY for p in out.iterdir()):
            return out
        target = out.parent.parent / "refused" / out.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            return out
        shutil.move(str(out), str(target))
        return target
    except OSError:
        return out


def hydra_entry(config_name: str, fn: Callable[[DictConfig], Any], *,
                check: Callable[[DictConfig], None] | None = None,
                result: Callable[[DictConfig, Any], Any] | None = None,
                on_error: Callable[[BaseException, float], None] | None = None):
    """Run ``fn(cfg)`` as a Hydra app whose misconfigurations end in one line, not a traceback.

    ``check(cfg)`` runs after the run's start, before ``fn``; ``result(cfg, fn's return)`` is what
    the app returns (a sweeper optimizes it); ``on_error(exc, started)`` sees an error first (a DDP
    rank reporting another rank's failure) and may exit itself. A command line Hydra cannot compose
    (``model=bogus``, ``model.nokey=1``) is one line and exit 2 too, unless HYDRA_FULL_ERROR=1 asks
    for Hydra's own report.
    """
    root = _checkout_conf()
    if root is not None:  # paths.root_dir: the checkout (data/, outputs/); installed: the working dir
        os.environ.setdefault("PROJECT_ROOT", str(root.parent))
    quiet_sweeper(sys.argv[1:])

    @hydra.main(version_base="1.3", config_path=conf_dir(), config_name=config_name)
    def _main(cfg: DictConfig):
        started = time.time()
        try:
            start_run(cfg)
            check_new_keys(config_name)
            if check is not None:
                check(cfg)
            value = fn(cfg)
            return result(cfg, value) if result is not None else None
        except Exception as e:
            inner = _unwrap(e)
            if on_error is not None:
                on_error(inner, started)
            if isinstance(inner, INPUT_ERRORS):
                msg = " ".join(str(inner).split())  # one line
                trace = _save_traceback(e)
                if trace is not None:
                    trace = str(set_aside_refused(Path(trace).parent) / ERROR_FILE)
                where = f" (traceback: {trace})" if trace else ""
                print(f"error: {msg}{where}", file=sys.stderr)
                sys.exit(2)
            raise

    def app(cfg: DictConfig | None = None):
        if cfg is not None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            return _main(cfg)
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises what it cannot compose, instead of printing it
        try:
            return _main()
        except (ConfigCompositionException, OverrideParseException) as e:
            print(f"error: {composition_error(e)}", file=sys.stderr)
            sys.exit(2)
        finally:
            os.environ.pop("HYDRA_FULL_ERROR", None)

    return app
