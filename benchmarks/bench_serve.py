"""``cvt serve`` under load: N concurrent clients, dynamic batching vs ``--max-batch 1``, and the offline ceiling.

    python benchmarks/bench_serve.py [--model cvt-13] [--clients 32] [--seconds 40] [--max-batch 32]
                                     [--max-wait-ms 10] [--predict-batches 8 16 32] [--device cpu]

One run measures, in this order and never two at once (the machine's cores are the resource measured):

1. the **ceiling**: what ``cvt predict`` does with the same image files already on disk (``Predictor.iter_files``,
   its decoding workers as ``cvt predict`` picks them), at each ``--predict-batches`` size; the best is the ceiling;
2. ``cvt serve`` (a subprocess, random weights in a native file) with dynamic batching, then with ``--max-batch 1``:
   ``--clients`` threads, each with a keep-alive connection, POST the image bytes in a loop for ``--seconds``
   after ``--warmup`` seconds; images/s, p50/p99 latency, failures, and the server's mean batch size and time.

The target (issue 18): with 32 clients, throughput >= 90% of the ceiling, p99 <= max-wait-ms + two batch times,
zero failed requests. Prints a table and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch


def photos() -> list[Path]:
    """Real photos from the scikit-image and scikit-learn wheels (as the tests use)."""
    import importlib.util

    out = []
    for pkg, sub, names in (
        ("skimage", "data", ("chelsea.png", "astronaut.png", "coffee.png", "rocket.jpg")),
        ("sklearn", "datasets/images", ("china.jpg", "flower.jpg")),
    ):
        spec = importlib.util.find_spec(pkg)
        if spec is None or spec.origin is None:
            sys.exit(f"bench_serve: needs {pkg} for its sample photos")
        out += [Path(spec.origin).parent / sub / n for n in names]
    return out


def write_images(root: Path, count: int) -> list[Path]:
    """``count`` files on disk, the photos in turn (their bytes are what the clients send too)."""
    root.mkdir(parents=True, exist_ok=True)
    sources = photos()
    files = []
    for i in range(count):
        src = sources[i % len(sources)]
        dst = root / f"{i:04d}{src.suffix}"
        shutil.copyfile(src, dst)
        files.append(dst)
    return files


def ceiling(weights: Path, files: list[Path], batches: list[int], device: str) -> dict[int, float]:
    """images/s of ``cvt predict``'s engine on ``files`` for each batch size (after one warm-up batch)."""
    from cvt.predict import Predictor

    workers = min(4, max(1, (os.cpu_count() or 2) - 1))  # what `cvt predict` picks for many files
    out = {}
    for b in batches:
        p = Predictor(weights=str(weights), batch_size=b, num_workers=workers, device=device)
        for _ in p.iter_files([str(f) for f in files[:b]]):
            pass
        start = time.perf_counter()
        n = sum(len(r.predictions) for r in p.iter_files([str(f) for f in files]))
        out[b] = n / (time.perf_counter() - start)
        print(f"  cvt predict --batch-size {b}: {out[b]:.2f} images/s", flush=True)
    return out


class ServerProcess:
    def __init__(self, weights: Path, log: Path, *options: str):
        with socket.socket() as s:  # a free port (uvicorn's own log line is off at --log-level warning)
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        command = [sys.executable, "-m", "cvt", "serve", "--weights", str(weights), "--port", str(self.port), *options]
        self.log = log
        with open(log, "wb") as sink:
            self.proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while self.get("/readyz")[0] != 200:
            if self.proc.poll() is not None:
                raise SystemExit(f"bench_serve: cvt serve exited:\n{self.log.read_text()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                raise SystemExit("bench_serve: the server did not get ready")
            time.sleep(0.2)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        except OSError:
            return 0, b""
        finally:
            conn.close()

    def batch_stats(self) -> tuple[float, float]:
        """``(mean real images per batch, mean seconds per batch)`` from the server's /metrics."""
        text = self.get("/metrics")[1].decode()

        def value(name: str) -> float:
            found = re.search(rf"^{name} (\S+)$", text, flags=re.M)
            return float(found[1]) if found else 0.0

        batches = value("cvt_batch_size_count") or 1.0
        return value("cvt_batch_size_sum") / batches, value("cvt_batch_seconds_sum") / batches

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=300)


def load(port: int, bodies: list[bytes], clients: int, warmup: float, seconds: float) -> dict[str, float]:
    """``clients`` threads POST images for ``warmup + seconds``; only requests started after the warm-up count."""
    begin = time.monotonic()
    t0, t1 = begin + warmup, begin + warmup + seconds
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        k = i
        while True:
            start = time.monotonic()
            if start >= t1:
                break
            ok = False
            try:
                conn.request("POST", "/v1/predict", bodies[k % len(bodies)])
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except OSError:
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            end = time.monotonic()
            k += clients
            if start >= t0 and end <= t1:
                with lock:
                    latencies.append(end - start)
                    failures[0] += not ok
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = sorted(latencies)
    done = len(lat) - failures[0]
    return {
        "images_per_s": done / seconds,
        "requests": len(lat),
        "failed": failures[0],
        "p50_s": statistics.median(lat) if lat else float("nan"),
        "p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else float("nan"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="cvt-13")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=10.0)
    ap.add_argument("--predict-batches", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--images", type=int, default=96, help="files on disk for the ceiling (and the clients' bodies)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more cvt serve options for both runs")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import cvt
    from cvt.torch.weights import save_native

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = cvt.create_model(args.model)  # random weights: speed does not depend on them
        weights = save_native(model.state_dict(), model.config, tmp / f"{args.model}.safetensors")
        size = model.config.img_size
        del model
        files = write_images(tmp / "images", args.images)
        bodies = [f.read_bytes() for f in files[:6]]
        print(f"{args.model} at {size}px: torch {torch.__version__}, {os.cpu_count()} CPUs", flush=True)
        print("ceiling (cvt predict on files on disk):", flush=True)
        ceil = ceiling(weights, files, args.predict_batches, args.device)
        best_b = max(ceil, key=ceil.get)
        results: dict[str, dict[str, float]] = {}
        common = ["--device", args.device, "--max-wait-ms", str(args.max_wait_ms), "--log-level", "warning"]
        for label, mb in (("dynamic batching", args.max_batch), ("--max-batch 1", 1)):
            server = ServerProcess(weights, tmp / f"serve-{mb}.log", "--max-batch", str(mb), *common, *args.extra)
            r = load(server.port, bodies, args.clients, args.warmup, args.seconds)
            r["mean_batch"], r["batch_s"] = server.batch_stats()
            r["exit_status"] = server.stop()
            results[label] = r
            print(f"  {label}: {r['images_per_s']:.2f} images/s, p50 {r['p50_s']:.2f} s, p99 {r['p99_s']:.2f} s, "
                  f"{r['failed']:.0f} failed of {r['requests']:.0f}, mean batch {r['mean_batch']:.1f} "
                  f"in {r['batch_s']:.2f} s, exit {r['exit_status']:.0f}", flush=True)  # fmt: skip
    dyn = results["dynamic batching"]
    bound = args.max_wait_ms / 1000 + 2 * dyn["batch_s"]
    print()
    print(f"| run ({args.clients} clients, {args.seconds:g} s) | images/s | p50 s | p99 s | failed |")
    print("|---|---:|---:|---:|---:|")
    print(f"| cvt predict, batch {best_b} (ceiling) | {ceil[best_b]:.2f} | | | |")
    for label, r in results.items():
        row = f"{r['images_per_s']:.2f} | {r['p50_s']:.2f} | {r['p99_s']:.2f} | {r['failed']:.0f}"
        print(f"| cvt serve, {label} | {row} |")
    print()
    gain = dyn["images_per_s"] / max(results["--max-batch 1"]["images_per_s"], 1e-9)
    print(f"throughput {dyn['images_per_s'] / ceil[best_b]:.0%} of the ceiling (target >= 90%); "
          f"p99 {dyn['p99_s']:.2f} s vs max-wait + 2 batch times = {bound:.2f} s; "
          f"batching gain over --max-batch 1: {gain:.2f}x")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"ceiling": ceil, "serve": results, "args": vars(args)}, default=str, indent=2))


if __name__ == "__main__":
    main()
