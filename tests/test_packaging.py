"""The installed package works outside a checkout: pyproject.toml installs the checkout's conf/ as
``sketchembed/conf`` and lists every package, and an installed ``sketchembed-train`` composes its
config from any directory (sketchembed.entry.conf_dir falls back to the installed configs)."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import tomllib
import yaml
from setuptools import find_packages

from sketchembed.cli import EXTRA_OF_MODULE, main

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _folders(root: Path, package: str) -> list[str]:
    """Every folder under ``root`` as a package name (code or data: setuptools wants both listed)."""
    return [package, *(".".join([package, *d.relative_to(root).parts]) for d in root.rglob("*")
                       if d.is_dir() and d.name != "__pycache__")]


def test_pyproject_installs_every_package_and_every_config():
    st = PYPROJECT["tool"]["setuptools"]
    assert set(find_packages(str(REPO / "src"))) <= set(st["packages"])
    assert sorted(st["packages"]) == sorted([*_folders(REPO / "src" / "sketchembed", "sketchembed"),
                                             *_folders(REPO / "conf", "sketchembed.conf")])
    assert st["package-dir"]["sketchembed.conf"] == "conf"
    assert st["package-data"]["sketchembed.conf"] == ["**/*.yaml"]
    # the glob covers every file of conf/: nothing a composed config needs is left behind
    files = [p for p in (REPO / "conf").rglob("*") if p.is_file()]
    assert files and all(p.suffix == ".yaml" for p in files), [p for p in files if p.suffix != ".yaml"]


def _copy_project(dest: Path) -> Path:
    """What a build reads (a copy: the checkout gets no build/ or egg-info)."""
    for name in ("src", "conf"):
        shutil.copytree(REPO / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, dest / name)
    return dest


def test_install_builds_without_warnings(tmp_path):
    """`pip install -e .` and `pip wheel .` run these two build-backend hooks; setuptools' warnings
    (a license table instead of an SPDX string, data folders missing from `packages`) came as 26
    blocks on every install. (An editable install's "InformationOnly" note is no warning.)"""
    src = _copy_project(tmp_path / "src")
    code = ("import sys; from setuptools import build_meta as b; "
            "b.build_wheel(sys.argv[1]); b.build_editable(sys.argv[1])")
    (tmp_path / "w").mkdir()
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w")], cwd=src, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    warned = [ln for ln in (r.stdout + r.stderr).splitlines() if "Warning" in ln]
    assert not warned, "\n".join(warned)
    (wheel,) = (tmp_path / "w").glob("sketchembed-0.1.0-py3-none-any.whl")
    meta = zipfile.ZipFile(wheel).read("sketchembed-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0 AND CC-BY-4.0" in meta


@pytest.mark.slow
def test_installed_entry_points_compose_their_config_outside_a_checkout(tmp_path):
    """Build the wheel (from a copy: the checkout gets no build/), install it into a target dir and
    run the installed sketchembed-train and sketchembed-eval from a directory with no conf/."""
    src = _copy_project(tmp_path / "src")
    wheels, target, elsewhere = tmp_path / "wheels", tmp_path / "site", tmp_path / "elsewhere"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
                   check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = wheels.glob("sketchembed-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    confs = {f"sketchembed/conf/{p.relative_to(REPO / 'conf')}" for p in (REPO / "conf").rglob("*.yaml")}
    assert confs <= names
    subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], check=True,
                   capture_output=True)
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "WANDB_MODE": "offline"}
    env.pop("PROJECT_ROOT", None)
    for script, overrides in (("sketchembed-train", ["model=lstm"]), ("sketchembed-eval", ["ckpt_path=x.ckpt"])):
        out = subprocess.run([str(target / "bin" / script), *overrides, "--cfg", "job", "--resolve"], cwd=elsewhere,
                             env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        cfg = yaml.safe_load(out.stdout)
        assert cfg["task_name"] == script.split("-")[1]
        # outputs and data are relative to where the command runs, not to the installed package
        assert cfg["paths"]["root_dir"] == "."
    assert not (elsewhere / "outputs").exists()
    # the installed package was the one that ran (not this checkout's sources)
    where = subprocess.run([sys.executable, "-c", "import sketchembed.entry as e; print(e.conf_dir())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where) == target / "sketchembed" / "conf"


def test_architecture_names_every_module():
    """docs/ARCHITECTURE.md lists every module of the package, bench/ and scripts/."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    modules = [*(REPO / "src" / "sketchembed").rglob("*.py"), *(REPO / "bench").glob("*.py"),
               *(REPO / "scripts").glob("*.py")]
    missing = [str(p.relative_to(REPO)) for p in modules
               if p.name != "__init__.py" and p.name not in text]
    assert not missing, f"add these to docs/ARCHITECTURE.md's module list: {missing}"


# who may import whom inside sketchembed (docs/ARCHITECTURE.md, "Import direction"): a part never
# imports a part that builds on it, so e.g. eval reads a checkpoint without pulling in training
# LEAVES import no other part; anyone may import them
LEAVES = {"messages", "metric_keys", "registry", "safeload", "study", "wandb_run"}
MAY_IMPORT = {
    "__init__": set(),  # re-exports STUDY_CLASSES (from the leaf study)
    "corpus": {"corpus"},
    "data": {"data", "corpus"},
    "metric": {"metric"},
    "nets": {"nets"},
    "entry": {"entry", "data", "corpus"},
    "models": {"models", "data", "corpus", "metric", "nets"},
    "eval": {"eval", "data", "corpus", "metric", "nets", "models"},
    "train": {"train", "data", "corpus", "metric", "nets", "models", "entry", "eval"},
    "commands": {"commands", "data", "corpus", "metric", "nets", "models", "entry", "eval"},
    "export": {"export", "data", "corpus", "metric", "nets", "models", "eval"},
    "studio": {"studio", "data", "corpus", "metric", "nets", "models", "eval", "export"},
}


def _sketchembed_imports(path: Path) -> set[str]:
    """The top-level sketchembed parts a module imports (anywhere in it, functions included)."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods = [node.module] if node.module != "sketchembed" else [f"sketchembed.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            mods = [a.name for a in node.names]
        else:
            continue
        names |= {m.split(".")[1] if m.count(".") else "__init__" for m in mods if m.split(".")[0] == "sketchembed"}
    return names


def test_parts_import_only_the_parts_below_them():
    pkg = REPO / "src" / "sketchembed"
    wrong = []
    for path in sorted(pkg.rglob("*.py")):
        part = path.relative_to(pkg).parts[0].removesuffix(".py")
        if part not in MAY_IMPORT:
            assert part in LEAVES | {"cli", "resources"}, f"{part}: add it to MAY_IMPORT or LEAVES"
            if part in LEAVES:
                wrong += [f"{path.relative_to(REPO)} imports sketchembed.{m}"
                          for m in _sketchembed_imports(path) - {"__init__"}]
            continue
        wrong += [f"{path.relative_to(REPO)} imports sketchembed.{m}"
                  for m in _sketchembed_imports(path) - MAY_IMPORT[part] - LEAVES - {"__init__"}]
    assert not wrong, "\n".join(wrong)


# ------------------------------------------------------------------------------------ optional extras
# What a core install (`pip install sketchembed`, no extra) must run without: every optional extra.
EXTRAS = PYPROJECT["project"]["optional-dependencies"]
CORE_WITHOUT = ("studio", "bench", "export")


def _extra_modules(extra: str) -> set[str]:
    """The top-level modules the distributions of ``extra`` install (as installed here)."""
    dists = {re.split(r"[<>=!~ ;\[]", req, maxsplit=1)[0].lower().replace("_", "-") for req in EXTRAS[extra]}
    return {mod for mod, ds in packages_distributions().items()
            if any(d.lower().replace("_", "-") in dists for d in ds)}


# the named top modules made uninstalled (None in sys.modules: `import` raises ModuleNotFoundError and
# importlib.util.find_spec answers None, as for a module that is not there), then the core imported
BLOCK_AND_IMPORT = """
import importlib, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
for name in sys.argv[2].split(","):
    importlib.import_module(name)
"""


@pytest.mark.slow  # imports every module of the package in a fresh interpreter (~15-40 s on 2 cores)
def test_core_modules_import_without_the_optional_extras():
    """Training, evaluation, the data pipeline and the command line need none of the extras."""
    blocked = set().union(*(_extra_modules(e) for e in CORE_WITHOUT))
    assert {"fastapi", "uvicorn", "cv2", "onnx", "onnxruntime"} <= blocked, blocked
    src = REPO / "src"
    core = sorted(".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
                  for p in (src / "sketchembed").rglob("*.py") if "studio" not in p.relative_to(src).parts)
    assert {"sketchembed.cli", "sketchembed.train.run", "sketchembed.commands.evaluate",
            "sketchembed.models", "sketchembed.data.datamodule", "sketchembed.corpus.prepare"} <= set(core)
    r = subprocess.run([sys.executable, "-c", BLOCK_AND_IMPORT, ",".join(sorted(blocked)), ",".join(core)],
                       cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(src)})
    assert r.returncode == 0, r.stderr[-3000:]


def test_serve_without_the_studio_extra_names_it(monkeypatch, capsys):
    """Without FastAPI/uvicorn `sketchembed serve` says which extra to install: one line, exit 2."""
    for name in [m for m in sys.modules if m.startswith("sketchembed.studio")]:
        monkeypatch.delitem(sys.modules, name)
    for name in _extra_modules("studio"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["serve", "--ckpt", "x.ckpt"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("error: `sketchembed serve` needs the studio extra") and "sketchembed[studio]" in err, err


def test_make_install_installs_every_extra_and_commands_name_real_ones():
    """`make install` (the README's first command) installs every optional extra, and each module the
    command line maps to an extra is one that extra installs."""
    installed = re.search(r'pip install -q -e "\.\[([a-z,]+)\]"', (REPO / "Makefile").read_text())
    assert installed and set(installed.group(1).split(",")) == set(EXTRAS), installed
    assert set(CORE_WITHOUT) <= set(EXTRAS)
    for module, extra in EXTRA_OF_MODULE.items():
        assert extra in EXTRAS and module in _extra_modules(extra), (module, extra)
