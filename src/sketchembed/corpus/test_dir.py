"""``data.test_dir``: evaluating a model on drawings from outside its dataset (a folder of per-class
files, or a prepared dataset), shared by the DataModule (which serves them) and eval (which checks
the folder before any heavy work). The one place that turns such a folder into a dataset."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

from sketchembed.corpus.formats import discover, suffix_list
from sketchembed.corpus.prepare import prepare
from sketchembed.corpus.store import PreparedDataset
from sketchembed.messages import short_list


def open_test_dir(path) -> tuple[PreparedDataset, tempfile.TemporaryDirectory | None]:
    """``(dataset, temporary dir to clean up or None)``: a prepared dataset as is, a folder of
    per-class files prepared into a temporary directory (every row is test data, so the split rule
    does not matter; file names are the classes, Quick, Draw!'s or not)."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return PreparedDataset(path), None
    if not path.is_dir():
        raise FileNotFoundError(f"test_dir not found: {path}")
    tmp = tempfile.TemporaryDirectory(prefix="sketchembed-test-")
    try:
        return prepare(path, Path(tmp.name) / "prepared", classes="from-files"), tmp
    except BaseException:
        tmp.cleanup()
        raise


def check_test_dir(test_dir, classes: Sequence[str]) -> None:
    """Fail early, naming the files, on a folder a model of ``classes`` cannot be evaluated on."""
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
        raise ValueError(f"data.test_dir={path}: {names}: class(es) [{short_list(sorted(unknown))}] "
                         f"unknown to the model (trained on: {short_list(classes)})")
