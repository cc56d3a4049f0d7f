"""The train loop's schedules (stiv_jax.training.schedule): log, checkpoint, validate, profile."""
import ml_collections

from stiv_jax.training.schedule import Schedule


def test_schedules_fire_on_their_periods_and_log_and_save_at_the_last_step():
    config = ml_collections.ConfigDict(dict(total_steps=12, log_every=5, checkpoint_every=4, sample_every=6,
                                            profile_steps=(2, 3)))
    s = Schedule.from_config(config)
    steps = range(1, 13)
    assert [d for d in steps if s.log(d)] == [5, 10, 12]
    assert [d for d in steps if s.checkpoint(d)] == [4, 8, 12]
    assert s.checkpoint(7, preempted=True)
    assert [d for d in steps if s.validate(d)] == [6, 12]
    assert [d for d in range(12) if s.profile_starts(d)] == [2] and [d for d in steps if s.profile_stops(d)] == [3]
    config.profile_steps, config.sample_every = (), 0
    off = Schedule.from_config(config)
    assert not any(off.validate(d) or off.profile_starts(d) or off.profile_stops(d) for d in range(13))
