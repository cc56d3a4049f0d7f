r"""Splits clip shards into a training and a held-out set by source time: the last clips of every source video.

  python -m stiv_jax.data.holdout --shards=runs/demo_data/real_all --train=runs/demo_data/train/real \
      --heldout=runs/demo_data/heldout/real [--fraction=0.25]

Of each source video (``meta.source``) the clips are ordered by ``start_sec``; the last ``ceil(fraction * n)`` go
to the held-out set (at least one, when the source has two clips or more), the rest to the training set. A
held-out clip thus shows a later part of a video the model trained on: the training domain, never the same frames
(clips do not overlap). Records are copied byte for byte into ``clips-XXXXX-of-YYYYY.array_record`` shards.
"""
from __future__ import annotations

import collections
import math
import os

from absl import app, flags

from stiv_jax.data import schema


def split_by_source_time(records: list[bytes], *, fraction: float) -> tuple[list[bytes], list[bytes]]:
    """``(train, heldout)`` record lists (see the module docstring); unreadable records raise ``RecordError``."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"--fraction={fraction}: expected a value in (0, 1)")
    by_source = collections.defaultdict(list)
    for record in records:
        meta = schema.decode_record(record)["meta"]
        by_source[meta["source"]].append((float(meta["start_sec"]), record))
    train, heldout = [], []
    for source in sorted(by_source):
        clips = [r for _, r in sorted(by_source[source], key=lambda item: item[0])]
        held = min(len(clips) - 1, max(1, math.ceil(fraction * len(clips))))
        train += clips[:len(clips) - held]
        heldout += clips[len(clips) - held:]
    return train, heldout


def split_shards(*, shards: str, train: str, heldout: str, fraction: float = 0.25, num_shards: int = 1) -> dict:
    """Reads every clip record of ``shards`` (directory or glob) and writes the two sets; returns their counts."""
    from array_record.python import array_record_data_source

    from stiv_jax.data.build_shards import shard_path, write_shard
    from stiv_jax.data.pipeline import shard_paths
    source = array_record_data_source.ArrayRecordDataSource(shard_paths(shards, key="--shards"))
    train_records, heldout_records = split_by_source_time([source[i] for i in range(len(source))],
                                                          fraction=fraction)
    for out, records in ((train, train_records), (heldout, heldout_records)):
        os.makedirs(out, exist_ok=True)
        per = math.ceil(len(records) / num_shards)
        for shard in range(num_shards):
            write_shard(shard_path(out, shard, num_shards), records[shard * per:(shard + 1) * per])
    counts = dict(train=len(train_records), heldout=len(heldout_records))
    print(f"split {sum(counts.values())} clips of {shards}: {counts['train']} to {train}, "
          f"{counts['heldout']} held out to {heldout}")
    return counts


def main(argv):
    del argv
    f = flags.FLAGS
    split_shards(shards=f.shards, train=f.train, heldout=f.heldout, fraction=f.fraction, num_shards=f.num_shards)


if __name__ == "__main__":
    flags.DEFINE_string("shards", None, "Directory or glob of the clip shards to split.", required=True)
    flags.DEFINE_string("train", None, "Output directory of the training clips.", required=True)
    flags.DEFINE_string("heldout", None, "Output directory of the held-out clips.", required=True)
    flags.DEFINE_float("fraction", 0.25, "Share of each source's clips held out (its last ones).")
    flags.DEFINE_integer("num_shards", 1, "ArrayRecord files per output set.")
    app.run(main)
