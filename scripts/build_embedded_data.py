#!/usr/bin/env python
"""Rebuild the prepared datasets shipped in src/sketchembed/resources/quickdraw/ from ../shared/quickdraw.

    python scripts/build_embedded_data.py [--shared ../shared/quickdraw]

Both folders are read (simplified first, so Google's simplified copy of a drawing wins; drawings
that exist only raw are simplified here). ``study10`` holds the ten study classes and ``others335``
the other 335 categories (pre-training corpus); both use the 70/15/15 fraction split, as no class
here comes near the study's 5,000 + 5,000 evaluation drawings. The README beside them is rewritten
with the counts, so it always matches what is shipped.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sketchembed import STUDY_CLASSES
from sketchembed.corpus.categories import CATEGORIES
from sketchembed.corpus.prepare import prepare, summary

REPO = Path(__file__).resolve().parents[1]
DEST = REPO / "src" / "sketchembed" / "resources" / "quickdraw"
COMMAND = "python scripts/build_embedded_data.py"

README_HEAD = """# Real Quick, Draw! drawings shipped with sketchembed

Two prepared datasets (the layout of `sketchembed.corpus.store`, memory-mapped `.npy` arrays plus
`manifest.json`) built from the real drawings in `../shared/quickdraw` (both its `simplified/` and
`raw/` folders: Google's simplified copy is kept when a drawing is in both; drawings found only raw
were simplified by `sketchembed.corpus.simplify`). Open them by name: `sketchembed.corpus.embedded.
embedded_dataset_path("study10")`, or `data.root=study10` in the training configs.

They exist so that tests, demos and trainings run on real drawings with nothing downloaded. They
are tiny next to the full dataset (~150,000 drawings per class): accuracies measured on them are
figures about these drawings, never the reference study's.

Rebuilt with (from the repository root, with `../shared/quickdraw` beside it):

    {command}

Split: `fractions` 70 / 15 / 15 per class, drawings ranked by a seeded hash of their key_id (seed 0),
so a drawing's split does not depend on file order (see `sketchembed.corpus.prepare`).

## Attribution and license

The drawings are from the Quick, Draw! dataset by Google (https://quickdraw.withgoogle.com/data),
made available under the Creative Commons Attribution 4.0 International license (CC BY 4.0,
https://creativecommons.org/licenses/by/4.0/). They were converted (simplified where only the raw
form was available, re-encoded as arrays); see `LICENSE-DATA.md`.
"""


def table(ds) -> str:
    rows = ["| class | train | val | test | total |", "|---|---:|---:|---:|---:|"]
    tot = [0, 0, 0]
    for name, c in ds.manifest["counts"].items():
        v = [c["train"], c["val"], c["test"]]
        tot = [a + b for a, b in zip(tot, v)]
        rows.append(f"| {name} | {v[0]} | {v[1]} | {v[2]} | {sum(v)} |")
    rows.append(f"| **all** | **{tot[0]}** | **{tot[1]}** | **{tot[2]}** | **{sum(tot)}** |")
    return "\n".join(rows)


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "quickdraw")
    args = p.parse_args(argv)
    shared = args.shared.resolve()
    if not (shared / "simplified").is_dir() or not (shared / "raw").is_dir():
        print(f"error: {shared} lacks simplified/ and raw/", file=sys.stderr)
        return 2
    # Relative input paths, so the shipped manifests name sources without this machine's layout.
    os.chdir(REPO)
    inputs = [os.path.relpath(shared / "simplified"), os.path.relpath(shared / "raw")]
    others = [c for c in CATEGORIES if c not in STUDY_CLASSES]
    built = {}
    for name, classes in (("study10", list(STUDY_CLASSES)), ("others335", others)):
        ds = prepare(inputs, DEST / name, classes, split="fractions", seed=0, on_error="skip",
                     progress=sys.stderr.isatty())
        print(summary(ds))
        print(f"{name}: {size_of(DEST / name) / 1e6:.1f} MB on disk\n")
        built[name] = ds

    s, o = built["study10"], built["others335"]
    text = README_HEAD.format(command=COMMAND)
    text += f"""
## `study10/` — the ten classes of the reference study

{len(s):,} drawings, {s.manifest['n_points']:,} points, {size_of(DEST / 'study10') / 1e6:.2f} MB;
{s.manifest['duplicates']} copies found in both folders kept once, {s.manifest['simplified_from_raw']}
drawings simplified from raw here, {s.manifest['skipped']['count']} bad inputs skipped.

{table(s)}

## `others335/` — the other 335 categories (pre-training corpus, 345-class setting)

{len(o):,} drawings, {o.manifest['n_points']:,} points, {size_of(DEST / 'others335') / 1e6:.2f} MB;
{o.manifest['duplicates']:,} copies found in both folders kept once, {o.manifest['simplified_from_raw']:,}
drawings simplified from raw here, {o.manifest['skipped']['count']} bad inputs skipped.

{table(o)}
"""
    (DEST / "README.md").write_text(text)
    print(f"wrote {DEST / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
