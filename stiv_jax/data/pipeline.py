"""The grain training pipeline: ArrayRecord shards -> decoded, augmented, bucketed, per-host numpy batches.

Per source (video clips, images, or precomputed latents) and per bucket (``buckets.py``), a ``MapDataset``:

  ArrayRecord source -> shuffle(seed), new order each epoch -> repeat -> per-host slice [process_index::process_count]
    -> parse + bucket tag (metadata only) -> keep this bucket's records
    -> decode (PyAV seeks to the clip, decodes only the needed frames) -> temporal stride + frame count
    -> resize + random/center crop (micro-conditions recorded)
  -> to_iter_dataset (threads) -> batch of the bucket's host batch size, dropping + counting corrupt records

The per-(source, bucket) batch streams are mixed by weight with ``IterDataset.mix`` (deterministic, so every
host picks the same bucket at the same step) and optionally run in worker processes (``mp_prefetch``). Batches
ship uint8 pixels; normalisation happens on device (``stiv_jax.training.step.pixels_to_unit``). The
``DataIterator`` on top tokenizes captions in the main process, counts skipped records, and checkpoints
(``get_state``/``set_state``, saved by ``stiv_jax.checkpointing``) so a resumed run sees exactly the batches an
uninterrupted one would. Per-host numpy batches become global arrays with
``stiv_jax.parallel.mesh.host_to_global_batch``.

Config (``config.data``): shards (or shard_weights: several sources mixed batch by batch, by weight), kind
(video|latent), batch_size, frames, frame_stride, frame_strides, resolution, random_crop, buckets, image_shards,
image_weight, image_batch_size, image_buckets, num_threads, prefetch, num_workers, on_host_count_change
(refuse|restart), on_damaged_shard (refuse|skip).

Damaged shards: every shard is opened at start-up; a truncated one (or a record whose bytes fail the ArrayRecord
chunk hash later) is an error naming the shard file, or with ``config.data.on_damaged_shard="skip"`` the shard
(or record) is left out, counted and reported.
"""
from __future__ import annotations

import bisect
import collections
import hashlib
import json
import os
from typing import Callable

import grain
import numpy as np
from absl import flags, logging

from stiv_jax.data import buckets as buckets_lib
from stiv_jax.data import decoders, schema
from stiv_jax.data.buckets import Bucket
from stiv_jax.data.shard_files import shard_paths

Tokenizer = Callable[[list[str]], tuple[np.ndarray, np.ndarray]]
MAX_CONSECUTIVE_SKIPS = 1000   # a stream this corrupt is a configuration error, not bad luck
SCAN_RECORDS = 2048            # records scanned at start-up to check every bucket has data
# Sources up to this many records are shuffled by a stored permutation per epoch (EpochShuffle), larger ones by
# grain's index cipher, which walks a 2**16-index domain per lookup: 7.7 ms per element of a 6-record source,
# 1.3 ms at 40 records, 0.1 ms at 600, 0.01 ms at 100k (measured; a tenth of a clip's decode at 6 records).
PERMUTATION_MAX_RECORDS = 2**16


class DamagedShardError(RuntimeError):
    """An ArrayRecord shard that cannot be opened (truncated) or holds a record that fails its checksum."""


DAMAGED_SHARD_CHOICES = ("refuse", "skip")


class ShardSource:
    """Random access over ArrayRecord shards whose read errors name the shard file and the record in it.

    With ``on_damaged="skip"`` an unreadable record reads as empty bytes (counted as a skipped record downstream,
    with the shard named in the log); with ``"refuse"`` it raises ``DamagedShardError``.
    """

    def __init__(self, paths: list[str], counts: list[int], *, on_damaged: str = "refuse"):
        self.paths, self.on_damaged = list(paths), on_damaged
        self.starts = list(np.cumsum([0] + list(counts[:-1]))) if counts else []
        self._source = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> bytes:
        try:
            return self._source[index]
        except RuntimeError as err:
            shard = bisect.bisect_right(self.starts, index) - 1
            where = f"{self.paths[shard]}: record {index - self.starts[shard]}"
            if self.on_damaged == "skip":
                logging.warning("data: skipping unreadable record %s (%s)", where, err)
                return b""
            raise DamagedShardError(f"{where} is unreadable ({err or 'no message'}); rebuild the shard, or set "
                                    "config.data.on_damaged_shard='skip'") from err

    def __repr__(self) -> str:
        return f"ShardSource({len(self.paths)} shards)"


def check_shards(paths: list[str]) -> tuple[list[str], list[int], list[tuple[str, str]]]:
    """``(good paths, their record counts, [(damaged path, why)])``: each shard is opened (footer and index)."""
    good, counts, damaged = [], [], []
    for path in paths:
        try:
            counts.append(len(grain.sources.ArrayRecordDataSource([path])))
            good.append(path)
        except (RuntimeError, OSError, ValueError) as err:
            damaged.append((path, f"cannot be opened: {err or 'truncated or not an ArrayRecord file'}"))
    return good, counts, damaged


def open_source(pattern: str, *, key: str = "config.data.shards", on_damaged: str = "refuse"):
    """A random-access source of record bytes: ArrayRecord shards, or ``tfds:NAME[@DATA_DIR]`` (our builder).

    ``on_damaged`` (``config.data.on_damaged_shard``): ``"refuse"`` a shard that cannot be opened (the error names
    it) or ``"skip"`` it (counted and reported in one line).
    """
    if on_damaged not in DAMAGED_SHARD_CHOICES:
        raise ValueError(f"config.data.on_damaged_shard={on_damaged!r}; valid: {', '.join(DAMAGED_SHARD_CHOICES)}")
    if pattern.startswith("tfds:"):
        from stiv_jax.data import tfds_builder
        return tfds_builder.record_source(pattern[len("tfds:"):])
    paths = shard_paths(pattern, key=key)
    good, counts, damaged = check_shards(paths)
    if damaged and (on_damaged == "refuse" or not good):
        path, why = damaged[0]
        raise DamagedShardError(f"{key}: shard {path} {why} ({len(damaged)} of {len(paths)} shards damaged); "
                                "rebuild it, or set config.data.on_damaged_shard='skip'")
    if damaged:
        print(f"data: skipping {len(damaged)} of {len(paths)} damaged shards of {key} "
              f"(config.data.on_damaged_shard='skip'): " + "; ".join(f"{p} {why}" for p, why in damaged), flush=True)
    return ShardSource(good, counts, on_damaged=on_damaged)


# ---------------------------------------------------------------------------------------------- batching
class SkipAndBatch(grain.IterDataset):
    """Stacks ``batch_size`` good examples; corrupt ones (``decoders.SKIPPED``) are dropped and listed in the
    batch under ``"_skipped"`` (the ``DataIterator`` counts and logs them). Captions stay a list of str."""

    def __init__(self, parent: grain.IterDataset, batch_size: int, stream: str):
        super().__init__(parent)
        self.batch_size, self.stream = batch_size, stream

    def __iter__(self):
        return _SkipAndBatchIterator(self._parent.__iter__(), self.batch_size, self.stream)


class _SkipAndBatchIterator(grain.DatasetIterator):
    def __init__(self, parent, batch_size: int, stream: str):
        super().__init__(parent)
        self.batch_size, self.stream = batch_size, stream
        self.shapes: dict | None = None

    def __next__(self) -> dict:
        examples, skipped, consecutive = [], [], 0
        while len(examples) < self.batch_size:
            example = next(self._parent)
            if decoders.SKIPPED not in example:
                shapes = {k: np.shape(v) for k, v in example.items() if k != "caption"}
                self.shapes = self.shapes or shapes
                if shapes == self.shapes:
                    examples.append(example)
                    consecutive = 0
                    continue
                example = {decoders.SKIPPED: f"record {int(example.get('record_id', -1))}: shapes {shapes} differ "
                                             f"from the bucket's {self.shapes}"}
            skipped.append(f"{self.stream}: {example[decoders.SKIPPED]}")
            consecutive += 1
            if consecutive >= MAX_CONSECUTIVE_SKIPS:
                raise RuntimeError(f"data stream {self.stream}: {consecutive} consecutive records were corrupt or "
                                   f"undecodable (last: {skipped[-1]}); check config.data shards")
        batch = {k: np.stack([e[k] for e in examples]) for k in examples[0] if k != "caption"}
        batch["caption"] = [e["caption"] for e in examples]
        batch["_skipped"] = skipped
        return batch

    def get_state(self):
        return self._parent.get_state()

    def set_state(self, state):
        self._parent.set_state(state)


# ---------------------------------------------------------------------------------------------- streams
def _take_bucket(bucket_index: int):
    # Unreadable records (-1) travel with bucket 0 so they are counted once.
    return lambda tagged: tagged[0] == bucket_index or (bucket_index == 0 and tagged[0] == -1)


def _unreadable_to_skip(decode):
    def run(tagged, rng):
        if tagged[0] == -1:
            return {decoders.SKIPPED: f"record {tagged[1]}: unreadable or not a {decode.__class__.__name__} record"}
        return decode(tagged, rng)
    return run


def scan_buckets(source, tagger: decoders.ParseAndTag, buckets: list[Bucket], *, what: str
                 ) -> tuple[dict, dict[int, dict]]:
    """Scans up to ``SCAN_RECORDS`` records: records per bucket, and (latent sources) each bucket's most common
    tensor shapes. Raises if a bucket has no record and the scan saw every record."""
    n = len(source)
    ids = range(n) if n <= SCAN_RECORDS else np.linspace(0, n - 1, SCAN_RECORDS).astype(int)
    counts = np.zeros(len(buckets) + 1, int)
    shape_votes: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    for i in ids:
        data = source[int(i)]
        tag = tagger((int(i), data))[0]
        counts[len(buckets) if tag is None or tag == -1 else tag] += 1
        if tagger.kind == "latent" and tag is not None and tag >= 0:
            shape_votes[tag][tuple(sorted(schema.latent_shapes(data).items()))] += 1
    table = {b.name: int(c) for b, c in zip(buckets, counts)}
    empty = [name for name, c in table.items() if c == 0]
    if empty and n <= SCAN_RECORDS:
        raise ValueError(f"{what}: no record fits buckets {empty} (records per bucket {table}, "
                         f"{int(counts[-1])} fit none or are unreadable); change the buckets or the shards")
    if empty:
        logging.warning("%s: no record among %d scanned fits buckets %s", what, len(ids), empty)
    shapes = {b: dict(votes.most_common(1)[0][0]) for b, votes in shape_votes.items()}
    return table, shapes


def bucket_streams(source, *, kind: str, buckets: list[Bucket], decode, stride: int, seed: int,
                   process_index: int, process_count: int, read: grain.ReadOptions, name: str
                   ) -> dict[str, tuple[grain.IterDataset, float]]:
    """``{stream name: (batched IterDataset, weight)}`` for every bucket of one source."""
    tagger = decoders.ParseAndTag(kind, buckets, stride)
    table, shapes = scan_buckets(source, tagger, buckets, what=name)
    if kind == "latent":
        decode = decoders.LatentDecoder(buckets, shapes)
    logging.info("data %s: records per bucket (scan) %s", name, table)
    n = len(source)
    base = grain.MapDataset.source(source).map_with_index(lambda i, data: (i % n, data))
    base = shuffled(base, seed % 2**32).repeat()[process_index::process_count].map(tagger)
    streams = {}
    for index, bucket in enumerate(buckets):
        ds = base.filter(_take_bucket(index)).random_map(_unreadable_to_skip(decode), seed=seed % 2**32)
        ds = SkipAndBatch(ds.to_iter_dataset(read), bucket.host_batch_size(process_count), f"{name}/{bucket.name}")
        streams[f"{name}/{bucket.name}"] = (ds, bucket.weight)
    return streams


class EpochShuffle(grain.MapDataset):
    """``parent`` in a new random order every epoch: element ``i`` is ``parent[perm_e[i % n]]`` with ``e = i // n``
    and ``perm_e`` a permutation drawn from ``(seed, e)``, so any index is a pure function of the seed (resumable
    like grain's ``shuffle``, and read after a ``repeat`` that passes epochs through). Keeps the permutations
    (int32) of the last ``EPOCHS_KEPT`` epochs, for the bucket streams that read the source at different paces."""

    EPOCHS_KEPT = 4

    def __init__(self, parent: grain.MapDataset, *, seed: int):
        super().__init__(parent)
        self.seed = int(seed)
        self._kept: dict[int, np.ndarray] = {}   # epoch -> permutation; replaced whole (grain's read threads)

    def _permutation(self, epoch: int) -> np.ndarray:
        kept = self._kept
        if epoch not in kept:
            drawn = np.random.default_rng([self.seed, epoch]).permutation(len(self._parent)).astype(np.int32)
            kept = dict(list(kept.items())[1 - self.EPOCHS_KEPT:] + [(epoch, drawn)])
            self._kept = kept
        return kept[epoch]

    def __len__(self) -> int:
        return len(self._parent)

    def __str__(self) -> str:
        return f"EpochShuffle(seed={self.seed})"

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        n = len(self._parent)
        epoch, position = divmod(int(index), n)
        return self._parent[int(self._permutation(epoch)[position]) + epoch * n]


def shuffled(ds: grain.MapDataset, seed: int) -> grain.MapDataset:
    """``ds`` reshuffled every epoch: ``EpochShuffle`` up to ``PERMUTATION_MAX_RECORDS`` records, and at ``2**k + 1``
    records, where grain 0.2.18's ``shuffle`` is not a permutation (measured: of 65,537 and of 1,048,577 records it
    reads one twice and one never); grain's ``shuffle`` otherwise."""
    n = len(ds)
    if n <= PERMUTATION_MAX_RECORDS or (n - 1) & (n - 2) == 0:
        return EpochShuffle(ds, seed=seed)
    return ds.shuffle(seed=seed)


def make_dataset(data_config, *, seed: int, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
    """The per-host ``IterDataset`` of batches (infinite), before tokenization (captions are strings)."""
    kind = data_config.kind
    strides = buckets_lib.frame_strides(data_config)
    stride = min(s for s, _ in strides)   # a clip joins a bucket when it holds the smallest stride's frames
    read = grain.ReadOptions(num_threads=int(data_config.num_threads),
                             prefetch_buffer_size=int(data_config.prefetch))
    common = dict(seed=seed, process_index=process_index, process_count=process_count, read=read)
    image_weight = float(data_config.image_weight or 0.0)
    on_damaged = data_config.on_damaged_shard
    if not 0.0 <= image_weight <= 1.0:
        raise ValueError(f"config.data.image_weight={image_weight} must be in [0, 1]")
    if image_weight > 0 and not data_config.image_shards:
        raise ValueError("config.data.image_weight > 0 needs config.data.image_shards")
    if kind not in ("video", "latent"):
        raise ValueError(f"config.data.kind={kind!r}; valid: video, latent")
    streams = {}
    if image_weight < 1.0:   # image_weight == 1: text-to-image only, config.data.shards is not read
        video_buckets = buckets_lib.video_buckets(data_config)
        decode = (decoders.ClipDecoder(video_buckets, strides=strides, random_crop=bool(data_config.random_crop))
                  if kind == "video" else None)
        sources = video_sources(data_config)
        for i, (pattern, key, weight) in enumerate(sources):
            # One source keeps the stream name and seed it always had (saved iterator states stay valid).
            name = kind if len(sources) == 1 else f"{kind}{i}"
            part = bucket_streams(open_source(pattern, key=key, on_damaged=on_damaged),
                                  kind="clip" if kind == "video" else "latent", buckets=video_buckets,
                                  decode=decode, stride=stride, name=name,
                                  **(common | dict(seed=seed if i == 0 else seed + 100 + i)))
            streams |= part if len(sources) == 1 else _reweight(part, weight)
    if image_weight > 0:
        image_buckets = buckets_lib.image_buckets(data_config)
        decode = decoders.ImageDecoder(image_buckets, random_crop=bool(data_config.random_crop))
        images = bucket_streams(open_source(data_config.image_shards, key="config.data.image_shards",
                                            on_damaged=on_damaged),
                                kind="image", buckets=image_buckets, decode=decode, stride=1, name="image",
                                seed=seed + 1, **{k: v for k, v in common.items() if k != "seed"})
        streams = _reweight(streams, 1.0 - image_weight) | _reweight(images, image_weight) if streams else images
    if len(streams) == 1:
        ds = next(iter(streams.values()))[0]
    else:
        ds = grain.IterDataset.mix({k: v[0] for k, v in streams.items()}, {k: v[1] for k, v in streams.items()})
    # A bucket stream filters out the other buckets' records by design; do not warn about the filter ratio.
    ds = grain.experimental.WithOptionsIterDataset(
        ds, grain.experimental.DatasetOptions(filter_warn_threshold_ratio=None))
    workers = int(data_config.num_workers or 0)
    if workers > 0:
        if not flags.FLAGS.is_parsed():   # grain workers read absl flags; library callers may not have parsed them
            flags.FLAGS.mark_as_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=int(data_config.prefetch)))
    return ds


def video_sources(data_config) -> list[tuple[str, str, float]]:
    """``[(shard pattern, config key, weight)]`` of the clip (or latent) sources: ``config.data.shard_weights``,
    ``((pattern, weight), ...)`` mixed batch by batch with those weights, or ``config.data.shards`` alone."""
    pairs = tuple(data_config.get("shard_weights", None) or ())
    if not pairs:
        return [(data_config.shards, "config.data.shards", 1.0)]
    if data_config.shards:
        raise ValueError(f"config.data.shards={data_config.shards!r} and config.data.shard_weights are both set; "
                         "set one (shard_weights lists every source with its weight)")
    out = []
    for i, pair in enumerate(pairs):
        key = f"config.data.shard_weights[{i}]"
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2 or not isinstance(pair[0], str)
                or not isinstance(pair[1], (int, float)) or not pair[1] > 0):
            raise ValueError(f"{key}={pair!r}: expected (shard pattern, weight > 0)")
        out.append((pair[0], key, float(pair[1])))
    return out


def _reweight(streams: dict, total: float) -> dict:
    norm = sum(w for _, w in streams.values())
    return {k: (ds, total * w / norm) for k, (ds, w) in streams.items()}


_FINGERPRINT_KEYS = ("shards", "kind", "frames", "frame_stride", "resolution", "random_crop", "buckets", "batch_size",
                    "image_shards", "image_weight", "image_batch_size", "image_buckets", "num_workers")
# Keys the stage configs did not hold before experiments/base.py gave every config every key: their saved states
# describe these as None. At the base's value a state saved that way still means the same batches.
_KEYS_ONCE_UNSET = {"image_shards": "", "image_weight": 0.0, "image_batch_size": 0, "image_buckets": (),
                    "num_workers": 0}


def fingerprint(data_config, seed: int, *, unset_at_default: bool = False) -> str:
    """What must match for a saved iterator state to mean the same batches (sources, buckets, seed...).

    ``unset_at_default``: the fingerprint of a config that left out the ``_KEYS_ONCE_UNSET`` keys still at the
    base's value (states saved by stage runs before every config held them).
    """
    described = {k: str(data_config[k]) for k in _FINGERPRINT_KEYS}
    if unset_at_default:
        described.update({k: "None" for k, v in _KEYS_ONCE_UNSET.items() if data_config[k] == v})
    described["seed"] = seed
    if data_config.frame_strides:   # only when set: older runs' fingerprints stay what they were
        described["frame_strides"] = str(tuple(data_config.frame_strides))
    if data_config.get("shard_weights", None):
        described["shard_weights"] = str(tuple(tuple(p) for p in data_config.shard_weights))
    return hashlib.sha1(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- iterator
class DataIterator(grain.DatasetIterator):
    """Host batches with token ids, a skipped-record count, and a checkpointable state.

    ``get_state()`` = the grain pipeline state plus ``process_count``, a config fingerprint and counters;
    ``set_state`` refuses a state from another host count or data config with an error naming what differs
    (``config.data.on_host_count_change="restart"`` instead starts a fresh data order seeded by the restored
    batch count, logging a warning).
    """

    def __init__(self, data_config, *, seed: int, tokenize: Tokenizer | None, process_index: int = 0,
                 process_count: int = 1):
        self.data_config, self.seed, self.tokenize = data_config, seed, tokenize
        self.process_index, self.process_count = process_index, process_count
        self.fingerprint = fingerprint(data_config, seed)
        self.accepted_fingerprints = {self.fingerprint, fingerprint(data_config, seed, unset_at_default=True)}
        self.batches = 0
        self.skipped_records = 0
        self.reseeds = 0
        self._build(seed)

    def _build(self, data_seed: int) -> None:
        """(Re)builds the grain pipeline with ``data_seed`` (``seed`` until a host-count restart reseeds it)."""
        if hasattr(self, "_inner"):
            self.close()
        self.data_seed = data_seed
        self._inner = iter(make_dataset(self.data_config, seed=data_seed, process_index=self.process_index,
                                        process_count=self.process_count))
        super().__init__(self._inner)   # the public way to (re-)parent: grain links the pipeline's context

    def __next__(self) -> dict:
        batch = next(self._inner)
        for why in batch.pop("_skipped"):
            self.skipped_records += 1
            logging.warning("data: skipped corrupt record (%d so far): %s", self.skipped_records, why)
        captions = batch.pop("caption")
        if self.tokenize is not None and "text_embeddings" not in batch:
            ids, mask = self.tokenize(list(captions))
            batch["text_ids"], batch["text_mask"] = np.asarray(ids), np.asarray(mask)
        self.batches += 1
        return batch

    def get_state(self) -> dict:
        return dict(pipeline=self._inner.get_state(), process_index=self.process_index,
                    process_count=self.process_count, fingerprint=self.fingerprint, batches=self.batches,
                    skipped_records=self.skipped_records, reseeds=self.reseeds, data_seed=self.data_seed)

    def set_state(self, state: dict) -> None:
        saved_count = state.get("process_count")
        problem = None
        if saved_count != self.process_count:
            problem = (f"the data iterator state was saved by {saved_count} processes but this run has "
                       f"{self.process_count}")
        elif state.get("fingerprint") not in self.accepted_fingerprints:
            problem = ("the data iterator state was saved with a different config.data (shards, buckets, batch "
                       "sizes, workers) or seed")
        if problem is None:
            if int(state.get("data_seed", self.seed)) != self.data_seed:   # saved after a reseed: same order
                self._build(int(state["data_seed"]))
            self._inner.set_state(state["pipeline"])
            self.reseeds = int(state.get("reseeds", 0))
        elif self.data_config.on_host_count_change == "restart" and saved_count != self.process_count:
            self.reseeds = int(state.get("reseeds", 0)) + 1
            new_seed = (self.seed * 1_000_003 + int(state.get("batches", 0)) + self.reseeds) % 2**32
            logging.warning("%s: starting a fresh data order with seed %d (config.data.on_host_count_change="
                            "'restart')", problem, new_seed)
            self._build(new_seed)
        else:
            raise ValueError(f"{problem}: resume with the same hosts and config.data, or set "
                             f"config.data.on_host_count_change='restart' to continue with a fresh data order")
        self.batches = int(state.get("batches", 0))
        self.skipped_records = int(state.get("skipped_records", 0))

    def close(self) -> None:
        # Also called by grain's __del__ when __init__ failed (e.g. no record fits a bucket) before _inner existed.
        closer = getattr(getattr(self, "_inner", None), "close", None)
        if closer is not None:
            closer()


def check_saved_host_count(data_iter_dir: str, process_count: int) -> None:
    """Raises a clear error when the grain state files in a checkpoint's ``data_iter`` directory were written by
    another number of processes (grain names them ``process_<i>-of-<n>.json``)."""
    names = [n for n in os.listdir(data_iter_dir) if n.startswith("process_") and n.endswith(".json")]
    counts = {int(n[:-5].split("-of-")[1]) for n in names}
    if names and process_count not in counts:
        raise ValueError(f"the data iterator in {data_iter_dir} was saved by {sorted(counts)} processes but this "
                         f"run has {process_count}: resume on {sorted(counts)} hosts, or set "
                         f"config.data.on_host_count_change='restart' and restore without the data_iter item")


def make_iterator(data_config, *, seed: int, tokenize: Tokenizer | None, process_index: int = 0,
                  process_count: int = 1) -> DataIterator:
    """A checkpointable iterator over this host's batches (see ``DataIterator``)."""
    logging.info("data: %s (%s), buckets %s", [p for p, _, _ in video_sources(data_config)], data_config.kind,
                 [b.name for b in buckets_lib.video_buckets(data_config)])
    return DataIterator(data_config, seed=seed, tokenize=tokenize, process_index=process_index,
                        process_count=process_count)


__all__ = ["Bucket", "DataIterator", "make_dataset", "make_iterator", "shard_paths", "schema",
           "check_saved_host_count"]
