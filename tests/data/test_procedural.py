"""The procedural digit set: captions agree with the videos, held-out pairs stay out, shards are ordinary clips."""
import numpy as np
import pytest

from stiv_jax.data import procedural, schema
from stiv_jax.eval import clips as clips_lib
from stiv_jax.eval import learning


@pytest.fixture(scope="module")
def digit_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    train = procedural.write_set(out=str(out / "train"), num_clips=60, split="train", seed=0)
    heldout = procedural.write_set(out=str(out / "heldout"), num_clips=30, split="heldout", seed=1)
    return out, train, heldout


def _decoded(path, frames=8):
    pairs = list(clips_lib.iter_captioned_clips(str(path), clips_lib.ClipWindows(num_frames=frames)))
    return np.stack([c for c, _ in pairs]), [c for _, c in pairs]


def test_caption_round_trips_through_parse_caption():
    assert procedural.caption(3, "red", "left", "slowly") == "a red 3 moves left slowly"
    assert procedural.parse_caption("a red 3 moves left slowly") == dict(colour="red", digit=3, direction="left",
                                                                         speed="slowly")


def test_parse_caption_names_a_caption_it_cannot_read():
    with pytest.raises(ValueError, match="a purple 3 moves left"):
        procedural.parse_caption("a purple 3 moves left slowly")


def test_rendered_digit_moves_the_named_way_and_stays_inside_the_frame():
    rng = np.random.default_rng(0)
    for _ in range(40):
        spec = procedural.random_spec(rng, frames=8, split="any")
        video = procedural.render(spec, frames=8)
        assert video.shape == (8, 32, 32, 3) and video.dtype == np.uint8
        track = learning.centroids(learning.foreground(video))
        assert not np.isnan(track).any()
        dx, dy = procedural.DIRECTION_VECTORS[spec.direction]
        travel = (track[-1] - track[0]) @ np.array([dx, dy])
        assert travel == pytest.approx(7 * procedural.SPEEDS[spec.speed], abs=1.0)
        x, y = spec.start_xy
        end = np.array([x, y]) + 7 * procedural.SPEEDS[spec.speed] * np.array([dx, dy])
        assert min(x, y, *end) >= 0 and max(x, y, *end) <= 32 - procedural.DIGIT_SIDE


def test_training_split_never_shows_a_heldout_pair_and_heldout_split_only_those(digit_shards):
    _, train, heldout = digit_shards
    pair = lambda c: (procedural.parse_caption(c)["digit"], procedural.parse_caption(c)["direction"])  # noqa: E731
    assert not {pair(c) for c in train["captions"]} & procedural.HELDOUT_PAIRS
    assert {pair(c) for c in heldout["captions"]} <= procedural.HELDOUT_PAIRS


def test_heldout_prompts_are_fixed_and_never_trained_on():
    prompts = procedural.heldout_prompts(20)
    assert prompts == procedural.heldout_prompts(20) and len(set(prompts)) == 20
    for text in prompts:
        parts = procedural.parse_caption(text)
        assert (parts["digit"], parts["direction"]) in procedural.HELDOUT_PAIRS


def test_shards_hold_ordinary_clip_records(digit_shards):
    out, train, _ = digit_shards
    from array_record.python import array_record_data_source
    from stiv_jax.data.pipeline import shard_paths
    source = array_record_data_source.ArrayRecordDataSource(shard_paths(str(out / "train")))
    assert len(source) == 60
    record = schema.decode_record(source[0])
    assert record["version"] == schema.CLIP_VERSION
    assert record["meta"]["num_frames"] == 8 and record["meta"]["width"] == 32
    assert record["caption"] in train["captions"]


def test_scorer_reads_the_captions_off_the_decoded_clips(digit_shards):
    out, _, _ = digit_shards
    for split in ("train", "heldout"):
        videos, captions = _decoded(out / split)
        scores = learning.score_t2v(videos, captions)
        assert scores["adherence"] >= 0.9, (split, scores)
        assert scores["direction"] == 1.0 and scores["speed"] == 1.0, (split, scores)
        assert scores["colour"] >= 0.95, (split, scores)   # H.264 chroma moves a few cyan digits towards blue


def test_scorer_on_noise_is_near_chance():
    prompts = procedural.heldout_prompts(40)
    noise = np.random.default_rng(0).integers(0, 256, (40, 8, 32, 32, 3), dtype=np.uint8)
    scores = learning.score_t2v(noise, prompts)
    assert scores["adherence"] <= 0.3 and scores["direction"] <= 0.35, scores


def test_write_set_names_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--split='test'"):
        procedural.write_set(out=str(tmp_path), num_clips=2, split="test")


def test_exemplars_draw_each_digit_from_its_first_images_only():
    images, labels = procedural.digit_images()
    first = {d: set(np.flatnonzero(labels == d)[:3].tolist()) for d in range(10)}
    rng = np.random.default_rng(5)
    specs = [procedural.random_spec(rng, frames=8, split="any", exemplars=3) for _ in range(200)]
    assert all(s.image_index in first[s.digit] for s in specs)
    assert len({s.image_index for s in specs}) == 30   # every one of the 3 x 10 images is drawn
    with pytest.raises(ValueError, match="exemplars"):
        procedural.write_set(out="unused", num_clips=2, exemplars=-1)
