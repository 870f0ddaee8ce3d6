"""`sketchembed serve`: the sketch studio on a local web server (uvicorn).

Binds 127.0.0.1 unless told otherwise: the API has no authentication and is meant for the person at
the machine (``--host 0.0.0.0`` shares it on the network, knowingly).
"""

from __future__ import annotations

import argparse
import socket
import sys

import torch
import uvicorn

from sketchembed.studio.app import create_app
from sketchembed.studio.runtime import RUNTIMES
from sketchembed.studio.service import Studio


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", help="sketchembed checkpoint (.ckpt), e.g. a run's checkpoints/last.ckpt "
                                       "(--runtime torch, the default)")
    parser.add_argument("--runtime", choices=RUNTIMES,
                        help="torch: the checkpoint's model; onnx: a file from `sketchembed export` (--model) "
                             "on onnxruntime, pre-processed from its metadata alone (default: onnx with --model)")
    parser.add_argument("--model", "--onnx", dest="model", help="the exported .onnx file (--runtime onnx)")
    parser.add_argument("--index", help="index dir from `sketchembed index build` (default: index the "
                                        "checkpoint's training drawings on start)")
    parser.add_argument("--data", help="prepared dataset or embedded name for the replay and the human test "
                                       "(default: the checkpoint's own, else the embedded study10)")
    parser.add_argument("--index-max", type=int, default=50_000,
                        help="without --index: index at most this many training drawings (default 50000)")
    parser.add_argument("--results", default="outputs/studio", help="where human-test results are saved (JSON)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default="cpu", help="cpu, auto, cuda, …")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: one sketch is too small to gain from more, and "
                             "more threads on a busy machine make each request many times slower)")


def check_listen(host: str, port: int) -> None:
    """One line naming ``--host``/``--port`` when the server could not listen there."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            s.bind(addr)
        except OSError as e:
            raise ValueError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None


def run(args) -> int:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535, got {args.port}")
    if args.index_max < 1:
        raise ValueError(f"--index-max must be >= 1, got {args.index_max}")
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    runtime = args.runtime or ("onnx" if args.model else "torch")
    source = args.model if runtime == "onnx" else args.ckpt
    if not source or (args.ckpt and args.model):
        raise ValueError("give --ckpt CKPT (torch) or --runtime onnx --model FILE.onnx, one of them")
    torch.set_num_threads(args.threads)
    check_listen(args.host, args.port)  # before the model loads: a taken port fails at once
    studio = Studio.open(source, index_dir=args.index, data=args.data, index_max=args.index_max,
                         results_dir=args.results, device=args.device, runtime=runtime)
    print(f"sketch studio ({studio.model_kind} on {runtime}, {len(studio.classes)} classes, "
          f"index of {len(studio.index)}) on "
          f"http://{args.host}:{args.port}/  — API docs at /docs; Ctrl-C stops it", file=sys.stderr)
    uvicorn.run(create_app(studio), host=args.host, port=args.port, log_level="warning")
    return 0
