"""A live studio for the browser test, the bench and the README screenshot: the app served by uvicorn
on a free loopback port, and the page driven in headless Chromium (Playwright's Python API pointed at
the system's ``chromium``; the browser is never downloaded).

``python -m sketchembed.studio.live --ckpt CKPT --out docs/img/studio.png`` draws the first strokes of
a real test drawing on the page with mouse events and saves a screenshot.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import uvicorn

from sketchembed.corpus.sketch import points_to_strokes
from sketchembed.studio import Studio, create_app

CHROMIUM = os.environ.get("SKETCHEMBED_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 (a free port) in a daemon thread; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + timeout
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the studio server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def browser_missing() -> str | None:
    """What is missing to run the page in Chromium, or None."""
    try:  # lazy: playwright is an optional (dev) dependency, reported here when missing
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Python package 'playwright' is missing (pip install playwright)"
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        return f"Chromium not found at {CHROMIUM} (apt-get install -y chromium, or set SKETCHEMBED_CHROMIUM)"
    return None


def launch(pw):
    return pw.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)


def draw_stroke(page, points: Sequence[tuple[float, float]], steps: int = 6) -> None:
    """Mouse down, move through ``points`` (0–1 of the canvas, ``steps`` moves per segment), up."""
    box = page.locator("#canvas").bounding_box()

    def to_px(x, y):
        return box["x"] + x * box["width"], box["y"] + y * box["height"]

    page.mouse.move(*to_px(*points[0]))
    page.mouse.down()
    for (ax, ay), (bx, by) in zip(points, points[1:]):
        for i in range(1, steps + 1):
            t = i / steps
            page.mouse.move(*to_px(ax + (bx - ax) * t, ay + (by - ay) * t))
    page.mouse.up()


def wait_predictions(page, n: int, timeout_ms: float | None = None) -> None:
    """Until the page has rendered its ``n``-th answer (``body[data-predictions]``); ``timeout_ms``
    None: the page's default timeout."""
    page.wait_for_selector(f"body[data-predictions='{n}']", timeout=timeout_ms)


def _test_drawing(studio, word: str, seed: int):
    """Strokes (0–1 of the canvas) of a test drawing of class ``word``, with a margin."""
    ds = studio.data
    rows = [r for r in ds.indices("test") if ds.classes[int(ds.labels[r])] == word]
    if not rows:
        raise ValueError(f"no test drawing of class {word!r} in {ds.root}")
    row = int(np.random.default_rng(seed).choice(rows))
    return [[(0.1 + 0.8 * x / 255, 0.1 + 0.8 * y / 255) for x, y in s.tolist()]
            for s in points_to_strokes(np.asarray(ds.points(row)))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sketchembed.studio.live", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", default="docs/img/studio.png")
    p.add_argument("--word", default="bus", help="draw a test drawing of this class")
    p.add_argument("--strokes", type=int, default=4, help="how many of its strokes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    why = browser_missing()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright  # lazy: optional (dev) dependency, checked above

    torch.set_num_threads(1)
    studio = Studio.open(args.ckpt, progress=False)
    strokes = _test_drawing(studio, args.word, args.seed)[: args.strokes]
    with serve_in_thread(create_app(studio)) as url, sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1180, "height": 760})
            page.goto(url + "/")
            page.wait_for_function("document.getElementById('model-info').textContent.length > 0")
            for i, s in enumerate(strokes, start=1):
                draw_stroke(page, s if len(s) > 1 else s * 2, steps=2)
                wait_predictions(page, i)
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
        finally:
            browser.close()
    print(f"wrote {args.out} ({len(strokes)} strokes of a test {args.word})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
