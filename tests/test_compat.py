"""Lightning's private names are used in sketchembed.train.compat alone, for the Lightning releases it
declares: an upgrade beyond them, or one that renames or reshapes a name, fails here."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import lightning
import pytest
import tomllib
from packaging.requirements import Requirement

from sketchembed.train import compat

SRC = Path(__file__).resolve().parents[1] / "src" / "sketchembed"


def test_installed_lightning_is_one_compat_was_written_for():
    assert compat.supported(), (f"lightning {lightning.__version__} is outside {compat.LIGHTNING_VERSIONS}: "
                                "check every name of sketchembed.train.compat against it, then widen the range")
    assert compat.supported("2.6.6") and not compat.supported("2.7.0") and not compat.supported("3.0")


# name -> the parameters it is called with, as compat calls it
SIGNATURES = {"restarting": ["self", "restarting"], "kill": ["self", "signum"],
              "_save_topk_checkpoint": ["self", "trainer", "monitor_candidates"],
              "_monitor_candidates": ["self", "trainer"]}


@pytest.mark.parametrize(("owner", "name"), compat.PRIVATE, ids=lambda x: getattr(x, "__name__", x))
def test_each_private_name_still_exists_with_its_signature(owner, name):
    member = inspect.getattr_static(owner, name)
    fn = member.fset if isinstance(member, property) else member
    assert fn is not None, f"{owner.__name__}.{name} is no longer settable"
    assert list(inspect.signature(fn).parameters) == SIGNATURES[name]


def test_private_state_still_exists():
    for owner, name in compat.PRIVATE_STATE:
        assert hasattr(owner(), name), f"{owner.__name__}() has no {name}"


def test_no_other_module_imports_a_private_lightning_name():
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "compat.py" and path.parent.name == "train":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "lightning":
                private = [a.name for a in node.names if a.name.startswith("_")]
                private += [node.module] if any(p.startswith("_") for p in node.module.split(".")) else []
                found += [f"{path.relative_to(SRC)}: {n}" for n in private]
    assert not found, found


def test_the_install_allows_only_the_checked_lightning_versions():
    """pyproject.toml's lightning requirement is the range compat was checked for: an install can
    never pick a Lightning whose private names were not looked at."""
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    (req,) = [Requirement(r) for r in pyproject["project"]["dependencies"] if Requirement(r).name == "lightning"]
    assert req.specifier == compat.LIGHTNING_VERSIONS
