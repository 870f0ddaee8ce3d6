"""Continuing a run: `python train.py resume=<run dir>` and the checks that make a resume exact.

A run dir holds everything a continuation needs: the overrides it was started with
(``.hydra/overrides.yaml``), its latest state (``checkpoints/last.ckpt``, written every epoch) and its
wandb run (``wandb/*run-<date>-<id>``). :func:`resume_argv` turns ``resume=DIR`` into that run's
overrides plus the new ones (which win), the same run dir and ``ckpt_path=DIR/checkpoints/last.ckpt``;
Hydra then composes the config as for the first start. A run dir is data: its saved overrides are
re-applied only when none could run code (:func:`check_saved_overrides`) and its checkpoint is read as
one (:func:`read_resumed`). :func:`keep_config_unless_resumed` puts the run's ``.hydra/`` record and
``config_tree.log`` back when the continuation fails before it trained. :class:`StepSeed` makes every
training step's randomness depend on ``(seed, rank, epoch, batch)`` only, so a resumed run draws what
the uninterrupted one would (``train.compat.resume_after_whole_epochs`` makes a run that stopped at an
epoch's end go on with the next epoch when ``trainer.max_steps`` is set).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf, open_dict

from sketchembed.entry import CONFIG_TREE_FILE, conf_dir
from sketchembed.messages import ConfigError
from sketchembed.models.checkpoint import Checkpoint, read_checkpoint
from sketchembed.registry import LOSSES, MINERS, MODELS, OPTIMIZERS, SCHEDULERS
from sketchembed.train.compat import save_unsaved_state
from sketchembed.wandb_run import read_run_id

LAST = Path("checkpoints") / "last.ckpt"
# keys a resume sets itself; a saved value of them is the previous start's, not the run's
_OWN_KEYS = ("resume", "ckpt_path")
_TARGET_IN_YAML = re.compile(r"^\s*_target_:\s*([\w.]+)", re.M)
_WANDB_RUN = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-([A-Za-z0-9]+)$")


def _key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def resume_argv(argv: list[str]) -> list[str]:
    """``[prog, ..., resume=DIR, ...]`` → the argv that continues run DIR; other argv unchanged.

    ``DIR`` is a run dir (or a checkpoint inside its ``checkpoints/``, to continue from that one).
    """
    prog, args = argv[0], list(argv[1:])
    found = [a for a in args if _key(a) == "resume" and not a.startswith("~")]
    if not found or found[-1].split("=", 1)[1] in ("", "null"):
        return argv
    if any(a in ("-m", "--multirun") for a in args):
        raise ConfigError("resume=DIR continues one run: start it without -m/--multirun")
    target = Path(found[-1].split("=", 1)[1]).expanduser()
    if target.is_file():  # a checkpoint: its run dir is two levels up
        run_dir, ckpt = target.parent.parent, target
    else:
        run_dir, ckpt = target, target / LAST
    saved = run_dir / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise ConfigError(f"resume={target}: not a run dir of train.py (no {saved})")
    if not ckpt.is_file():
        raise ConfigError(f"resume={target}: no checkpoint to continue from ({ckpt} is missing)")
    try:
        old = yaml.safe_load(saved.read_text()) or []
    except yaml.YAMLError as e:
        raise ConfigError(f"resume={target}: {saved} is not readable YAML ({e.__class__.__name__})") from None
    if not isinstance(old, list) or not all(isinstance(o, str) for o in old):
        raise ConfigError(f"resume={target}: {saved} is not a list of overrides")
    new = [a for a in args if _key(a) != "resume"]
    given = {_key(a) for a in new if "=" in a}
    kept = [o for o in old if _key(o) not in given and _key(o) not in _OWN_KEYS]
    check_saved_overrides(kept, f"resume={target}: {saved}")  # what is re-applied, not what the user replaces
    extra = [] if "ckpt_path" in given else [f"ckpt_path={ckpt}"]
    if "hydra.run.dir" not in given:
        extra.append(f"hydra.run.dir={run_dir}")
    return [prog, *kept, *new, *extra, f"resume={run_dir}"]


def _shipped_targets() -> frozenset[str]:
    """The ``_target_``s of the configs that come with sketchembed (callbacks, loggers, data, …)."""
    found = set()
    for f in Path(conf_dir()).rglob("*.yaml"):
        found |= set(_TARGET_IN_YAML.findall(f.read_text()))
    return frozenset(found)


def target_allowed(target: object) -> bool:
    """Whether a run folder may name ``target``: a registered part (or a PML / torch.optim library
    part) or a target of the shipped configs. Found by name, never imported."""
    if not isinstance(target, str):
        return False
    registries = (MODELS, LOSSES, MINERS, OPTIMIZERS, SCHEDULERS)
    return any(r.name_for_target(target) for r in registries) or target in _shipped_targets()


def check_saved_overrides(overrides: list[str], where: str) -> None:
    """A run folder is data: its saved overrides are re-applied only when none could run code.

    Refused (one :class:`ConfigError` line naming ``where`` and the override): an interpolation
    (``${oc.create:...}`` builds a node Hydra would instantiate; a saved value is never resolved), a
    ``_target_`` (in the key or inside a dict value) that :func:`target_allowed` does not know, and a
    ``hydra.searchpath`` (configs from elsewhere). Given again on the command line, they are the
    user's own and go through.
    """
    for text in overrides:  # before parsing: the text is never resolved
        if "${" in text:
            _refuse(where, text, "an interpolation (a saved value is never resolved)")
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        raise ConfigError(f"{where}: not Hydra overrides ({' '.join(str(e).split())[:120]})") from None
    for text, o in zip(overrides, parsed):
        key = o.key_or_group
        why = None
        if key == "hydra.searchpath" or key.startswith("hydra.searchpath."):
            why = "a config search path (configs from elsewhere)"
        else:
            bad = [t for t in _targets(key, o.value()) if not target_allowed(t)]
            if bad:
                why = f"_target_={str(bad[0])[:80]!r}, which is no registered part nor one of the shipped configs'"
        if why:
            _refuse(where, text, why)


def _refuse(where: str, text: str, why: str) -> None:
    raise ConfigError(f"{where}: refused: {text[:80]!r} sets {why}: a run folder is data; give the override "
                      "on the command line if you trust it")


def _targets(key: str, value) -> list:
    """The ``_target_`` values an override sets: its own (``x._target_=...``) and any in a dict value."""
    found = [value] if key == "_target_" or key.endswith("._target_") else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _targets(str(k), v)
    elif isinstance(value, list):
        for v in value:
            found += _targets("", v)
    return found


_RECORD = ("config.yaml", "hydra.yaml", "overrides.yaml")
# the run dir's own record of its config, which a continuation rewrites too (entry.CONFIG_TREE_FILE)
_RUN_RECORD = (CONFIG_TREE_FILE,)


def _primary_process() -> bool:
    """Not a rank that Lightning, torchrun or SLURM started beside the first one (they run the same
    command line, and must not keep or restore the run's record a second time)."""
    return all(os.environ.get(k, "0") == "0" for k in ("LOCAL_RANK", "RANK", "SLURM_PROCID"))


def _stamp(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


@contextlib.contextmanager
def keep_config_unless_resumed(argv: list[str]):
    """Around a ``resume=DIR`` run (``argv`` from :func:`resume_argv`): the run's ``.hydra/`` record
    is copied to ``.hydra/before_resume_<date>/``, and put back if the continuation fails before it
    wrote a new ``last.ckpt``.

    Hydra rewrites ``.hydra/`` when the run starts, before any check: a refused resume (a checkpoint
    that does not fit ``model.hidden=32``) would otherwise leave its overrides as the run's config, and
    every later ``resume=DIR`` would fail, or train with them. Once the continuation has written a
    checkpoint, the new record is what that checkpoint was trained with, and it stays.
    """
    found = [a.split("=", 1)[1] for a in argv[1:] if _key(a) == "resume" and not a.startswith(("~", "+"))]
    if not found or found[-1] in ("", "null") or not _primary_process():
        yield
        return
    run_dir = Path(found[-1])
    backup = _keep_previous_config(run_dir)
    before = _stamp(run_dir / LAST)
    ok = False
    try:
        yield
        ok = True
    except SystemExit as e:
        ok = e.code in (None, 0)
        raise
    finally:
        if not ok and _stamp(run_dir / LAST) == before:
            _restore_config(run_dir, backup)


def _keep_previous_config(run_dir: Path) -> Path:
    """Hydra rewrites ``.hydra/`` (and the run start ``config_tree.log``) for the continuation; the
    start's record is kept beside it."""
    src = run_dir / ".hydra"
    stem = src / f"before_resume_{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    dst, n = stem, 1
    while dst.exists():  # two resumes in one second: each keeps its own
        n += 1
        dst = stem.with_name(f"{stem.name}_{n}")
    dst.mkdir(parents=True)
    for name in _RECORD:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    for name in _RUN_RECORD:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dst / name)
    return dst


def _restore_config(run_dir: Path, backup: Path) -> None:
    """``.hydra/`` and ``config_tree.log`` as they were before a failed continuation (the files it
    had, no others); the backup goes."""
    for folder, names in ((run_dir / ".hydra", _RECORD), (run_dir, _RUN_RECORD)):
        for name in names:
            if (backup / name).is_file():
                shutil.copy2(backup / name, folder / name)
            elif (folder / name).is_file():
                (folder / name).unlink()
    shutil.rmtree(backup, ignore_errors=True)


def wandb_run_id(run_dir) -> str | None:
    """The id of the wandb run written in ``run_dir``: ``wandb_id.txt`` (the one record, also read by
    eval), else — runs written before it existed — the latest of wandb's own folder names."""
    stored = read_run_id(run_dir)
    if stored:
        return stored
    runs = sorted(p for p in (Path(run_dir) / "wandb").glob("*run-*") if p.is_dir() and _WANDB_RUN.match(p.name))
    return _WANDB_RUN.match(runs[-1].name).group(1) if runs else None


def continue_wandb_run(cfg: DictConfig) -> None:
    """On ``resume=DIR``: log to DIR's wandb run (same id, ``resume="allow"``) instead of a new one."""
    resumed = cfg.get("resume")
    node = OmegaConf.select(cfg, "logger.wandb")
    if not resumed or not isinstance(node, DictConfig) or node.get("id"):
        return
    run_id = wandb_run_id(resumed)
    if run_id:
        with open_dict(node):
            node.id = run_id
            node.resume = "allow"


def _short(value, width: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= width else text[:width - 1] + "…"


def read_resumed(path) -> Checkpoint:
    """The checkpoint to continue from or test (``ckpt_path``), read as data once
    (:func:`sketchembed.models.checkpoint.read_checkpoint`: vetted, its record migrated)."""
    return read_checkpoint(path, label=f"ckpt_path={path}")


def check_checkpoint_fits(path, model, model_choice: str, ck: Checkpoint | None = None) -> Checkpoint:
    """Check that checkpoint ``path`` (``ck``, when already read) holds weights for ``model`` (the
    config's model).

    One line naming the checkpoint's model kind and the config's, or the first parameters that
    differ — not Lightning's state-dict traceback. Returns the checkpoint.
    """
    ck = read_resumed(path) if ck is None else ck
    hp, theirs = ck.record.args, ck.record.kind
    ours = getattr(model, "MODEL_KIND", type(model).__name__)
    hint = "resume=<its run dir> reuses the run's own config"
    if theirs != ours:
        raise ConfigError(f"ckpt_path={path} holds a model_kind={theirs!r} model, but the config builds "
                          f"model={model_choice} (model_kind={ours!r}): pass model={theirs} and its other "
                          f"settings, or {hint}")
    state, mine = ck.raw["state_dict"], model.state_dict()
    missing = sorted(set(mine) - set(state))
    unexpected = sorted(set(state) - set(mine))
    shapes = sorted(k for k in set(mine) & set(state)
                    if isinstance(state[k], torch.Tensor) and tuple(state[k].shape) != tuple(mine[k].shape))
    if missing or unexpected or shapes:
        # shape-giving settings (numbers, names) first
        differ = sorted((k for k in set(hp) & set(model.hparams) if hp[k] != model.hparams[k]),
                        key=lambda k: (isinstance(hp[k], dict), k))
        differences = ", ".join(f"model.{k}={_short(hp[k])} (config: {_short(model.hparams[k])})" for k in differ[:4])
        what = "; ".join(filter(None, [
            f"settings that differ: {differences}" if differ else "",
            f"{len(shapes)} weights of other shapes (e.g. {shapes[0]}: {tuple(state[shapes[0]].shape)} vs "
            f"{tuple(mine[shapes[0]].shape)})" if shapes else "",
            f"{len(missing)} weights missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else ""]))
        raise ConfigError(f"ckpt_path={path} does not fit the configured model={model_choice}: {what}; {hint}")
    return ck


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the latest state, rewritten every epoch — what a resume continues from.

    Lightning's ``save_last`` on a monitored checkpoint rewrites it only when a new best is saved
    (so it would hold the best epoch, not the latest). A class of its own, because its checkpoint
    state is keyed by class name and settings: a user's own metric-less ModelCheckpoint beside it
    would otherwise clash with it.
    """

    def __init__(self, dirpath, every_n_epochs: int = 1, every_n_train_steps: int | None = None):
        super().__init__(dirpath=dirpath, filename="last", monitor=None, save_top_k=1, save_last=False,
                         every_n_epochs=every_n_epochs, every_n_train_steps=every_n_train_steps,
                         enable_version_counter=False)

    def on_train_end(self, trainer, pl_module) -> None:
        """The final state too when training stops between two save points (``max_steps`` not a
        multiple of ``val_check_interval``, or no validation at all, as in the study trainer)."""
        super().on_train_end(trainer, pl_module)
        save_unsaved_state(self, trainer)


class StepSeed(Callback):
    """Reseed python, numpy and torch before each training batch from ``(seed, rank, epoch, batch)``.

    Lightning restores weights, optimizer, scheduler and loops on resume, not the global RNGs, and
    the sanity check and dataloader iterators draw from them (and a resumed epoch gets no
    ``on_train_epoch_start``): without this a resumed run's random miner and dropout would draw other
    numbers than the uninterrupted run. Per batch, so a resume from a mid-epoch checkpoint is exact too.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        key = [self.seed, int(trainer.global_rank), int(trainer.current_epoch), int(batch_idx)]
        s = int(np.random.SeedSequence(key).generate_state(1)[0])
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)  # all devices
