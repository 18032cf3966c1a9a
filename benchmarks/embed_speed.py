"""Image embedding throughput (issue 38, item 4): ways to run EfficientNet-Lite0, side by side.

    python benchmarks/embed_speed.py [--src ../shared/data/eth80] [--every 10] [--rounds 2]

Every variant embeds image files (ETH-80's 3,280 by default) to L2-normalised 1280-d features in
one process: decoding (PIL: open, RGB, bilinear resize to 224 x 224) and the network together,
except the rows marked "decode only" and "network only". "today" (the converter's path before
issue 38: PyTorch, ``torch.no_grad``, batches of 32, torch's default threads, decoding in the
loop) and the adopted path (``ImageEncoder().embed``, as the converters call it now) each embed
every image once: the min cosine between them over all images, and their full-pass times. Then
``--rounds`` rounds run every variant in turn (after one untimed batch) on every ``--every``-th
image, and each keeps its best round, so a burst of load from another job biases none. Columns:
threads (per worker), batch size, ms per image, images per second, speed-up over today, and the
smallest cosine with today's embedding of the same image.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from recbole_onevision.preprocess import image_encoder  # noqa: E402
from recbole_onevision.preprocess.image_folder import scan  # noqa: E402

SIZE = 224


def decode(path: str, draft: bool = False) -> np.ndarray:
    """The converter's decoding: uint8 (SIZE, SIZE, 3). ``draft`` lets the JPEG decoder scale down
    by 1/2-1/8 while the image stays at least SIZE (a no-op for images smaller than that)."""
    from PIL import Image

    with Image.open(path) as image:
        if draft:
            image.draft("RGB", (SIZE, SIZE))
        return np.asarray(image.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR), dtype=np.uint8)


def decode_all(paths, workers: int = 1, draft: bool = False) -> np.ndarray:
    if workers == 1:
        return np.stack([decode(p, draft) for p in paths])
    with ThreadPoolExecutor(workers) as pool:
        return np.stack(list(pool.map(decode, paths, [draft] * len(paths))))


def today_network(model):
    """The network as the converter ran it before issue 38 (float32 NCHW input, no_grad)."""
    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = (torch.from_numpy(images.astype(np.float32)).permute(0, 3, 1, 2) - 127.0) / 128.0
            features = model.extract_features(x).mean(dim=(2, 3))
            return torch.nn.functional.normalize(features, dim=1).numpy()
    return run


def torch_network(module, inference_mode: bool = False):
    """``module`` maps a uint8 NHWC tensor to features (:class:`image_encoder.Features` or a
    traced/compiled one)."""
    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode() if inference_mode else torch.no_grad():
            return module(torch.from_numpy(images)).numpy()
    return run


class ChannelsLast(image_encoder.Features):
    def forward(self, images):
        x = ((images.permute(0, 3, 1, 2).float() - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)
        return torch.nn.functional.normalize(self.model.extract_features(x).mean(dim=(2, 3)), dim=1)


def onnx_network(session):
    return lambda images: session.run(None, {"images": images})[0]


def batches(paths, size):
    return [paths[i:i + size] for i in range(0, len(paths), size)]


def pipeline(network, batch: int, decode_workers: int = 1, workers: int = 1):
    """Files -> embeddings: each batch decoded (serially, or spread over ``decode_workers``
    threads) then run through ``network``; ``workers`` > 1 runs whole batches (decode + network)
    on that many threads at once."""
    def embed_batch(group, pool=None):
        images = np.stack(list(pool.map(decode, group))) if pool else np.stack([decode(p) for p in group])
        return network(images)

    def run(paths):
        if workers > 1:
            with ThreadPoolExecutor(workers) as pool:
                return np.concatenate(list(pool.map(embed_batch, batches(paths, batch))))
        if decode_workers > 1:
            with ThreadPoolExecutor(decode_workers) as pool:
                return np.concatenate([embed_batch(g, pool) for g in batches(paths, batch)])
        return np.concatenate([embed_batch(g) for g in batches(paths, batch)])
    return run


def timed(fn, warmup=None):
    if warmup is not None:
        warmup()
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import onnxruntime
    import PIL
    return (f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__}, Pillow {PIL.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", default=os.path.join(ROOT, "..", "shared", "data", "eth80"),
                        help="an image folder <category>/<object>/<view>.jpg|png (default: ETH-80 in ../shared/data)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (quick check)")
    parser.add_argument("--every", type=int, default=10, help="the timing rounds use every N-th image")
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds, every variant in turn")
    args = parser.parse_args()
    if not os.path.isdir(args.src):
        sys.exit(f"embed_speed: image folder not found: {os.path.abspath(args.src)} (ETH-80 lives in "
                 "../shared/data/eth80/<category>/<object>/*.jpg; pass another folder with --src)")
    paths = [p for _, _, p in scan(args.src)][:args.limit]
    subset = paths[::args.every]
    n = len(paths)
    default_threads = torch.get_num_threads()
    load_before = os.getloadavg()
    print(f"# Image embedding speed: {n} images from {os.path.abspath(args.src)}", flush=True)

    model = image_encoder.ImageEncoder().model
    features = image_encoder.Features(model).eval()
    variants, notes = [], []  # (name, threads, batch, kind, run: paths -> embeddings)

    def add(name, threads, batch, run, kind="both", torch_threads=True):
        def with_threads(p):
            if torch_threads:
                torch.set_num_threads(threads)
            try:
                return run(p)
            finally:
                torch.set_num_threads(default_threads)
        variants.append((name, threads, batch, kind, with_threads))

    # today: the converter's path before issue 38 (first: the reference)
    add("today: PyTorch no_grad, decode in loop", default_threads, 32, pipeline(today_network(model), 32))
    add("today, 1 thread", 1, 32, pipeline(today_network(model), 32))
    # decoding and the network apart
    add("decode only: PIL, serial", 1, "-", decode_all, kind="decode")
    add("decode only: PIL, 2-thread pool", 2, "-", lambda p: decode_all(p, workers=2), kind="decode")
    add("decode only: PIL draft (no-op here: images < 224 px)", 1, "-", lambda p: decode_all(p, draft=True),
        kind="decode")
    images = decode_all(subset)
    row_of = {p: i for i, p in enumerate(subset)}
    net = today_network(model)

    def network_only(p):
        rows = [row_of[q] for q in p]
        return np.concatenate([net(images[rows[i:i + 32]]) for i in range(0, len(rows), 32)])
    add("network only: today's (images decoded beforehand)", default_threads, 32, network_only, kind="network")
    # batch size and threads (PyTorch, today's computation)
    for batch in (8, 128):
        add("PyTorch no_grad", 2, batch, pipeline(today_network(model), batch))
    add("PyTorch no_grad", 1, 8, pipeline(today_network(model), 8))
    # inference_mode, channels-last
    add("PyTorch inference_mode", 2, 8, pipeline(torch_network(features, inference_mode=True), 8))
    channels_last = ChannelsLast(copy.deepcopy(model).to(memory_format=torch.channels_last)).eval()
    add("PyTorch inference_mode + channels-last", 2, 8, pipeline(torch_network(channels_last, True), 8))
    # exported graphs
    with torch.no_grad():
        frozen = torch.jit.freeze(torch.jit.trace(features, torch.zeros(8, SIZE, SIZE, 3, dtype=torch.uint8)))
    add("torch.jit trace + freeze", 2, 8, pipeline(torch_network(frozen), 8))
    torch.set_num_threads(default_threads)
    start = time.perf_counter()
    sessions = {t: image_encoder.onnx_session(model, SIZE, threads=t) for t in (1, 2)}
    notes.append(f"ONNX export + two ONNX Runtime sessions took {time.perf_counter() - start:.1f} s.")
    for threads, batch in ((1, 8), (2, 8), (2, 32)):
        add("ONNX Runtime", threads, batch, pipeline(onnx_network(sessions[threads]), batch), torch_threads=False)
    add("ONNX Runtime, decode in 2-thread pool", 2, 8, pipeline(onnx_network(sessions[2]), 8, decode_workers=2),
        torch_threads=False)
    add("ONNX Runtime, 2 workers (decode + run per batch)", 1, 8, pipeline(onnx_network(sessions[1]), 8, workers=2),
        torch_threads=False)
    add("PyTorch no_grad, 2 workers (decode + run per batch)", 1, 8,
        pipeline(today_network(model), 8, workers=2))
    # the converters' path now
    encoder = image_encoder.ImageEncoder()
    start = time.perf_counter()
    encoder.session  # noqa: B018
    notes.append(f"ImageEncoder's model load + ONNX export + session: {time.perf_counter() - start:.1f} s "
                 "(once per encoder, not in the row).")
    add(f"adopted: ImageEncoder().embed ({encoder.workers} workers)", 1, encoder.batch_size,
        lambda p: encoder.embed(p, show_progress=False), torch_threads=False)

    # full passes: today's (the reference) and the adopted path's, over every image
    reference, today_s = timed(lambda: variants[0][-1](paths), lambda: variants[0][-1](paths[:32]))
    adopted, adopted_s = timed(lambda: variants[-1][-1](paths), lambda: variants[-1][-1](paths[:8]))
    full_cosine = (adopted * reference).sum(axis=1).min()
    print(f"  {time.strftime('%H:%M:%S')} full pass over {n} images: today {1000 * today_s / n:.1f} ms/image, "
          f"adopted {1000 * adopted_s / n:.1f} ms/image, min cosine {full_cosine:.6f}", flush=True)
    # interleaved rounds on the subset: each variant keeps its best
    rows = [paths.index(p) for p in subset]
    times, cosines = [[] for _ in variants], []
    for name, threads, batch, kind, run in variants:
        out = run(subset)  # warm-up, and the embeddings compared
        cosines.append("-" if kind == "decode" else f"{(out * reference[rows]).sum(axis=1).min():.6f}")
    for round_ in range(args.rounds):
        for (name, *_, run), t in zip(variants, times):
            _, seconds = timed(lambda: run(subset))
            t.append(1000 * seconds / len(subset))
        print(f"  {time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}  round {round_ + 1}: "
              + ", ".join(f"{t[-1]:.1f}" for t in times), flush=True)

    best = [min(t) for t in times]
    print(f"\nMachine: {machine()}. Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC. "
          f"Load average (1 min) {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after. "
          f"torch default threads: {default_threads}. ms / image: the best of {args.rounds} interleaved rounds over "
          f"{len(subset)} of the {n} images (every {args.every}th), min cosine over those; full passes over all "
          f"{n}: today {1000 * today_s / n:.1f} ms/image, adopted {1000 * adopted_s / n:.1f} ms/image "
          f"({today_s / adopted_s:.2f}x), min cosine {full_cosine:.6f}.\n")
    print("| variant | threads | batch | ms / image | images / s | speed-up | min cosine vs today |")
    print("|---|---|---|---|---|---|---|")
    for (name, threads, batch, kind, _), ms, cos in zip(variants, best, cosines):
        speedup = f"{best[0] / ms:.2f}x" if kind == "both" else "-"
        print(f"| {name} | {threads} | {batch} | {ms:.1f} | {1000 / ms:.1f} | {speedup} | {cos} |")
    print()
    for note in notes:
        print(f"- {note}")


if __name__ == "__main__":
    main()
