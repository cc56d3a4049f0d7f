r"""The shard builder as an Apache Beam pipeline: the same clips, records and shards as ``build_shards``.

  python -m stiv_jax.data.beam_pipeline --videos='DIR_OR_GLOB' --captions=FILE.jsonl --out=DIR \
      [--num_shards=4 --max_clip_frames=16 ...] [-- --runner=FnApiRunner --direct_num_workers=2 \
      --direct_running_mode=multi_processing]

Everything after ``--`` is passed to Beam as pipeline options (default ``--runner=FnApiRunner``: the local engine
of Beam's DirectRunner; ``--runner=DirectRunner`` works too but Beam 2.77 first tries to download its Prism runner
from GitHub and falls back to the same engine offline), so the same command runs on Dataflow, Flink or
Spark for millions of videos (``--runner=DataflowRunner --project=... --region=... --temp_location=gs://...``;
workers need this package installed, e.g. ``--setup_file=./setup.py``). ArrayRecord writes local paths, so
``--out`` must be a filesystem every worker sees (a shared mount such as gcsfuse on Dataflow).

Stages: Create(video paths) -> cut each video (``clips.process_video``, the function the local builder runs)
-> key every clip record by ``clips.shard_of`` -> GroupByKey -> write each shard sorted by clip key
-> ``summary.json`` (clips per shard, skipped inputs by name). Beam counters: ``clips_written``,
``inputs_skipped``, ``videos``.
"""
from __future__ import annotations

import os
import time

import apache_beam as beam
from absl import app, flags
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from stiv_jax.data import build_shards as local
from stiv_jax.data import clips as clips_lib

NAMESPACE = "stiv_jax.data"
DEFAULT_BEAM_ARGS = ["--runner=FnApiRunner"]  # the DirectRunner's local engine, with no download attempt


class CutVideo(beam.DoFn):
    """One ``(path, caption entries)`` -> its ``VideoResult`` (records and/or skip reason)."""

    def __init__(self, spec: clips_lib.ClipSpec):
        self.spec = spec
        self.videos = Metrics.counter(NAMESPACE, "videos")
        self.clips = Metrics.counter(NAMESPACE, "clips_written")
        self.skipped = Metrics.counter(NAMESPACE, "inputs_skipped")

    def process(self, job):
        path, entries = job
        result = clips_lib.process_video(path, entries, self.spec)
        self.videos.inc()
        self.clips.inc(len(result.records))
        if result.skipped:
            self.skipped.inc()
        yield result


def _write_shard(item, *, out: str, num_shards: int) -> tuple[int, int]:
    shard, keyed = item
    records = sorted(r for r in keyed if r is not None)
    local.write_shard(local.shard_path(out, shard, num_shards), [record for _, record in records])
    return shard, len(records)


def _write_summary(_, *, out: str, num_shards: int, shard_counts, skipped, uncaptioned, videos: int,
                   start_time: float) -> dict:
    counts = dict(shard_counts)
    summary = local.make_summary(clips_per_shard=[counts.get(i, 0) for i in range(num_shards)],
                                 skipped=[tuple(s) for s in skipped], videos=videos, uncaptioned_clips=uncaptioned,
                                 seconds=time.time() - start_time, runner="beam")
    local.report(summary, out)
    return summary


def build_pipeline(root: beam.Pipeline, *, videos: str, captions: str, out: str,
                   spec: clips_lib.ClipSpec = clips_lib.ClipSpec(), num_shards: int = 4) -> None:
    """Adds the shard-building stages to ``root`` (run it with ``root.run()`` or a ``with`` block)."""
    if num_shards < 1:
        raise ValueError(f"num_shards={num_shards} must be >= 1")
    os.makedirs(out, exist_ok=True)
    caption_table = local.load_captions(captions)
    paths = local.list_videos(videos)
    if not paths:
        raise FileNotFoundError(f"--videos={videos!r} matches no video files")
    jobs = [(p, caption_table.get(os.path.basename(p))) for p in paths]
    start_time = time.time()

    results = (root | "Videos" >> beam.Create(jobs) | "Reshuffle" >> beam.Reshuffle()
               | "Cut" >> beam.ParDo(CutVideo(spec)))
    keyed = results | "KeyByShard" >> beam.FlatMap(
        lambda r: [(clips_lib.shard_of(k, num_shards), (k, rec)) for k, rec in r.records])
    every_shard = root | "EveryShard" >> beam.Create([(i, None) for i in range(num_shards)])
    shard_counts = ((keyed, every_shard) | "Flatten" >> beam.Flatten() | "GroupByShard" >> beam.GroupByKey()
                    | "WriteShards" >> beam.Map(_write_shard, out=out, num_shards=num_shards))
    skipped = results | "Skipped" >> beam.FlatMap(lambda r: [(r.path, r.skipped)] if r.skipped else [])
    uncaptioned = (results | "Uncaptioned" >> beam.Map(lambda r: r.uncaptioned_clips)
                   | "SumUncaptioned" >> beam.CombineGlobally(sum))
    _ = (root | "Once" >> beam.Create([None])
         | "Summary" >> beam.Map(_write_summary, out=out, num_shards=num_shards,
                                 shard_counts=beam.pvalue.AsList(shard_counts),
                                 skipped=beam.pvalue.AsList(skipped),
                                 uncaptioned=beam.pvalue.AsSingleton(uncaptioned), videos=len(paths),
                                 start_time=start_time))


def run(*, videos: str, captions: str, out: str, spec: clips_lib.ClipSpec = clips_lib.ClipSpec(),
        num_shards: int = 4, beam_args: list[str] | None = None) -> dict:
    """Builds and runs the pipeline; returns the summary read back from ``out/summary.json``."""
    import json
    options = PipelineOptions(beam_args or DEFAULT_BEAM_ARGS)
    with beam.Pipeline(options=options) as root:
        build_pipeline(root, videos=videos, captions=captions, out=out, spec=spec, num_shards=num_shards)
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)


def main(argv):
    beam_args = argv[1:] or DEFAULT_BEAM_ARGS
    run(videos=FLAGS.videos, captions=FLAGS.captions, out=FLAGS.out, spec=local.spec_from_flags(FLAGS),
        num_shards=FLAGS.num_shards, beam_args=beam_args)


if __name__ == "__main__":
    FLAGS = flags.FLAGS
    local.define_flags()
    app.run(main)
