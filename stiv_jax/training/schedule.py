"""When the train loop logs, saves, validates and profiles: every schedule of a run, read from its config once.

A step number here is ``done``, the count of optimizer steps completed (1 after the first step), except for
``profile_starts``, which is asked before the step it names runs.
"""
from __future__ import annotations

import dataclasses


def every(done: int, period: int) -> bool:
    """True when ``done`` is a multiple of ``period`` (0 or less: never)."""
    return period > 0 and done % period == 0


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The loop's periodic work.

    Attributes:
      total_steps: the run's last step (``config.total_steps``); logging and saving always happen there.
      log_every: metrics row every that many steps (``config.log_every``).
      checkpoint_every: save every that many steps (``config.checkpoint_every``); a preemption saves too.
      validate_every: in-training validation every that many steps (``config.sample_every``; 0: never).
      profile: ``(start, stop)``: a ``jax.profiler`` trace from before step ``start`` to after step ``stop``
        (``config.profile_steps``; ``(-1, -1)``: no trace).
    """

    total_steps: int
    log_every: int
    checkpoint_every: int
    validate_every: int = 0
    profile: tuple[int, int] = (-1, -1)

    @classmethod
    def from_config(cls, config) -> "Schedule":
        return cls(total_steps=int(config.total_steps), log_every=int(config.log_every),
                   checkpoint_every=int(config.checkpoint_every), validate_every=int(config.sample_every or 0),
                   profile=tuple(int(s) for s in (config.profile_steps or (-1, -1))))

    def log(self, done: int) -> bool:
        return every(done, self.log_every) or done == self.total_steps

    def checkpoint(self, done: int, *, preempted: bool = False) -> bool:
        return preempted or every(done, self.checkpoint_every) or done == self.total_steps

    def validate(self, done: int) -> bool:
        return every(done, self.validate_every)

    def profile_starts(self, step: int) -> bool:
        """True before the step that begins the trace (``step``: steps completed so far)."""
        return step == self.profile[0]

    def profile_stops(self, done: int) -> bool:
        return done == self.profile[1]
