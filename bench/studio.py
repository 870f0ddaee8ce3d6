"""Sketch studio: latency and throughput of ``POST /api/predict`` on loopback.

The server is the real `sketchembed serve` command in its own process (its own interpreter, so the
client's threads do not share its GIL), with the CPU default model (the main job's config, trained
for one step: speed does not depend on the weights) and the index it builds of the embedded study10
training drawings. Requests are real test-split drawings cut after each stroke — what the page sends
on every pen-up. Latency: one client, one request at a time (p50 / p95). Throughput: 8 concurrent
clients, a bounded number of requests. Goals (issue 12): p95 < 50 ms, >= 50 requests/s on 2 cores.

Adversarial row (issue 18): the same 8 normal clients alone, then beside 2 clients that post, back to
back, the costliest drawings within the documented limits (:func:`adversarial_bodies`); the normal
clients' p95 latency and requests/s are compared. Goal: p95 at most 3x, requests/s at least half of
their figures alone (the studio's work budget, sketchembed/studio/budget.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
FULL = dict(drawings=40, latency_requests=300, throughput_requests=400, clients=8, warmup=10, tiny=False)
QUICK = dict(drawings=3, latency_requests=20, throughput_requests=32, clients=8, warmup=2, tiny=True)
# Train-run overrides that only make a checkpoint (one step, nothing else run or logged).
CKPT_ONLY = ["trainer.max_epochs=1", "trainer.max_steps=1", "trainer.limit_val_batches=0",
             "trainer.num_sanity_val_steps=0", "trainer.enable_progress_bar=false", "test=false", "logger=none",
             "callbacks.embedding_eval=null", "callbacks.sample_images=null", "callbacks.progress=null",
             "callbacks.lr_monitor=null"]
TINY = ["data.image_size=32", "data.max_snapshots=3", "model.embedding_dim=16", "model.hidden=16",
        "model.mlp_hidden=16", "model.layers=1"]


def _env() -> dict:
    src = str(REPO / "src")
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
            "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}


def make_checkpoint(out: Path, tiny: bool = False) -> Path:
    """The main job's model (``python train.py``), one step trained; its ``checkpoints/last.ckpt``."""
    args = [sys.executable, str(REPO / "train.py"), *CKPT_ONLY, *(TINY if tiny else []), f"hydra.run.dir={out}"]
    r = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    ckpt = out / "checkpoints" / "last.ckpt"
    if r.returncode != 0 or not ckpt.is_file():
        raise RuntimeError(f"training the bench checkpoint failed (exit {r.returncode}): {r.stderr[-2000:]}")
    return ckpt


def stroke_prefixes(n_drawings: int, data: str = "study10") -> list[dict]:
    """``/api/predict`` bodies: the first ``n_drawings`` test drawings, each cut after every stroke."""
    from sketchembed.corpus.embedded import resolve_root
    from sketchembed.corpus.sketch import check_strokes, points_to_strokes
    from sketchembed.corpus.store import PreparedDataset

    ds = PreparedDataset(resolve_root(data))
    bodies = []
    for row in ds.indices("test")[:n_drawings]:
        strokes = points_to_strokes(np.asarray(ds.points(int(row))))
        as_json = [[s[:, 0].astype(int).tolist(), s[:, 1].astype(int).tolist()] for s in strokes]
        # prefixes the studio refuses as the readers do (a first stroke that is a lone dot) are left out
        bodies += [{"drawing": as_json[:i], "format": "simplified"} for i in range(1, len(strokes) + 1)
                   if check_strokes(strokes[:i]) is None]
    return bodies


def adversarial_bodies() -> list[dict]:
    """The costliest drawings within the documented limits, each a different kind of work: a raw
    zig-zag of 20,000 points (the most points; the largest body), one of 500 points across the whole
    canvas (the most simplification work: refused after its RDP budget) and 2,000 simplified points
    (the most the model reads)."""
    n = 20_000
    x = np.linspace(0, 255, n).round(3)
    long_zigzag = [[x.tolist(), np.where(np.arange(n) % 2 == 0, 0.0, 0.2).tolist()]]
    n = 500
    wide_zigzag = [[np.linspace(0, 255, n).round(3).tolist(), [0.0, 255.0] * (n // 2)]]
    rng = np.random.default_rng(0)
    dense = [[rng.integers(0, 256, 250).tolist(), rng.integers(0, 256, 250).tolist()] for _ in range(8)]
    return [{"drawing": long_zigzag, "format": "raw"}, {"drawing": wide_zigzag, "format": "raw"},
            {"drawing": dense, "format": "simplified"}]


def start_server(ckpt: Path, timeout: float = 600.0) -> tuple[subprocess.Popen, str]:
    """`sketchembed serve` in a child process on a free loopback port; returns once it answers."""
    import httpx

    from sketchembed.studio.live import free_port

    port = free_port()
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "sketchembed.cli", "serve", "--ckpt", str(ckpt),
                             "--port", str(port)], cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            tail = log.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"sketchembed serve exited ({proc.returncode}): {tail}")
        try:
            if httpx.get(url + "/api/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError(f"sketchembed serve did not answer within {timeout:.0f} s")


def measure(url: str, bodies: list[dict], *, latency_requests: int, throughput_requests: int, clients: int,
            warmup: int) -> dict:
    """Latency (sequential) and throughput (``clients`` threads) of ``/api/predict`` over ``bodies``."""
    import httpx

    def post(client, body):
        r = client.post(url + "/api/predict", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"/api/predict answered {r.status_code}: {r.text[:200]}")

    with httpx.Client(timeout=60) as c:
        for i in range(warmup):
            post(c, bodies[i % len(bodies)])
        lat = []
        for i in range(latency_requests):
            t0 = time.perf_counter()
            post(c, bodies[i % len(bodies)])
            lat.append(time.perf_counter() - t0)
    lat_ms = 1000 * np.asarray(lat)

    _, wall = _load(url, [json.dumps(b).encode() for b in bodies], throughput_requests, clients)
    return {"latency_requests": latency_requests, "p50_ms": float(np.percentile(lat_ms, 50)),
            "p95_ms": float(np.percentile(lat_ms, 95)), "mean_ms": float(lat_ms.mean()),
            "throughput_requests": throughput_requests, "clients": clients, "wall_s": wall,
            "requests_per_s": throughput_requests / wall}


def _load(url: str, bodies: list[bytes], requests: int, clients: int) -> tuple[np.ndarray, float]:
    """``clients`` threads posting ``bodies`` in turn until ``requests`` are answered 200: each
    request's latency (s) and the wall time."""
    import httpx

    counter = iter(range(requests))
    lock = threading.Lock()
    lat: list[float] = []
    errors: list[BaseException] = []

    def worker():
        with httpx.Client(timeout=120) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t0 = time.perf_counter()
                try:
                    r = c.post(url + "/api/predict", content=bodies[i % len(bodies)],
                               headers={"content-type": "application/json"})
                    if r.status_code != 200:
                        raise RuntimeError(f"/api/predict answered {r.status_code}: {r.text[:200]}")
                except BaseException as e:  # noqa: BLE001 - reported after the run
                    errors.append(e)
                    return
                lat.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"normal clients: {errors[0]}")
    return np.asarray(lat), wall


def measure_adversarial(url: str, bodies: list[dict], adversarial: list[dict], *, requests: int, clients: int,
                        adversaries: int = 2) -> dict:
    """The normal clients' p95 latency and requests/s alone, then beside ``adversaries`` clients posting
    the ``adversarial`` bodies back to back (answers counted by status); the ratios with / alone."""
    import httpx

    normal = [json.dumps(b).encode() for b in bodies]
    heavy = [json.dumps(b).encode() for b in adversarial]
    alone, wall_alone = _load(url, normal, requests, clients)
    stop = threading.Event()
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def adversary(offset: int):
        with httpx.Client(timeout=120) as c:
            i = offset
            while not stop.is_set():
                r = c.post(url + "/api/predict", content=heavy[i % len(heavy)],
                           headers={"content-type": "application/json"})
                with lock:
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                i += 1

    threads = [threading.Thread(target=adversary, args=(k,)) for k in range(adversaries)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # the adversaries are at work before the normal clients start
    try:
        beside, wall_beside = _load(url, normal, requests, clients)
    finally:
        stop.set()
        for t in threads:
            t.join()
    res = {"clients": clients, "adversaries": adversaries, "requests": requests,
           "alone_p95_ms": float(np.percentile(1000 * alone, 95)), "alone_rps": requests / wall_alone,
           "beside_p95_ms": float(np.percentile(1000 * beside, 95)), "beside_rps": requests / wall_beside,
           "adversary_answers": {str(k): v for k, v in sorted(statuses.items())}}
    res["p95_ratio"] = res["beside_p95_ms"] / res["alone_p95_ms"]
    res["rps_ratio"] = res["beside_rps"] / res["alone_rps"]
    return res


def run(quick: bool = False) -> dict:
    cfg = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-studio-") as tmp:
        t0 = time.perf_counter()
        ckpt = make_checkpoint(Path(tmp) / "run", tiny=cfg["tiny"])
        bodies = stroke_prefixes(cfg["drawings"])
        proc, url = start_server(ckpt)
        print(f"  checkpoint + server start (index of study10 train): {time.perf_counter() - t0:.0f} s; "
              f"{len(bodies)} stroke prefixes of {cfg['drawings']} test drawings")
        try:
            res = measure(url, bodies, latency_requests=cfg["latency_requests"],
                          throughput_requests=cfg["throughput_requests"], clients=cfg["clients"],
                          warmup=cfg["warmup"])
            adv = measure_adversarial(url, bodies, adversarial_bodies(), requests=cfg["throughput_requests"],
                                      clients=cfg["clients"])
        finally:
            proc.terminate()
            proc.wait(30)
    model = "tiny combined (quick)" if quick else "CPU default combined (test_resnet, 64 px)"
    print(f"studio /api/predict, {model}, loopback, real drawings cut after each stroke")
    print(f"  latency, 1 client, {res['latency_requests']} requests: p50 {res['p50_ms']:.1f} ms, "
          f"p95 {res['p95_ms']:.1f} ms (goal < 50 ms)")
    print(f"  throughput, {res['clients']} clients, {res['throughput_requests']} requests: "
          f"{res['requests_per_s']:.0f} requests/s (goal >= 50)")
    print(f"  {adv['clients']} normal clients, {adv['requests']} requests, alone vs beside {adv['adversaries']} "
          f"clients posting the costliest drawings within the limits (goal: p95 <= 3x, requests/s >= 0.5x)")
    print(f"    {'':8} {'p95 ms':>8} {'requests/s':>11}")
    print(f"    {'alone':8} {adv['alone_p95_ms']:8.1f} {adv['alone_rps']:11.1f}")
    print(f"    {'beside':8} {adv['beside_p95_ms']:8.1f} {adv['beside_rps']:11.1f}")
    print(f"    {'ratio':8} {adv['p95_ratio']:8.2f} {adv['rps_ratio']:11.2f}   adversaries' answers by status: "
          f"{adv['adversary_answers']}")
    return {"model": model, "prefixes": len(bodies), **res, "adversarial": adv}
