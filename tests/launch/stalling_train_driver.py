"""Runs ``stiv_jax.train.train`` on the tiny trainer config, optionally with a data source that stalls.

  python stalling_train_driver.py WORKDIR --total_steps=N --log_every=N --checkpoint_every=N
      [--stall_after=N --hang_timeout_s=S]

With ``--stall_after=N`` the input pipeline yields N synthetic batches, then blocks forever inside
``data_source_stalls`` (as a dead storage mount or a wedged decode worker would): no further step can complete, so
the hang watchdog must dump every thread's stack and end the process with status 42.
"""
import argparse
import os
import sys
import time

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TESTS_DIR, "training"))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


def data_source_stalls():
    time.sleep(3600)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("workdir")
    parser.add_argument("--total_steps", type=int, required=True)
    parser.add_argument("--log_every", type=int, required=True)
    parser.add_argument("--checkpoint_every", type=int, required=True)
    parser.add_argument("--stall_after", type=int, default=0)
    parser.add_argument("--hang_timeout_s", type=float, default=1800.0)
    args = parser.parse_args()

    import trainer_testlib
    from stiv_jax import train as train_lib

    config = trainer_testlib.tiny_config(total_steps=args.total_steps, checkpoint_every=args.checkpoint_every,
                                         log_every=args.log_every, console_metrics=True)
    config.health.hang_timeout_s = args.hang_timeout_s
    config.health.startup_timeout_s = 300.0  # the first compile of the tiny model takes seconds
    config.mesh.ici = dict(data=-1, fsdp=1, context=1, tensor=1)
    synthetic = trainer_testlib.synthetic_iterator_factory(config)

    def stalling_iterator(data_config, **kwargs):
        batches = synthetic(data_config, **kwargs)
        for _ in range(args.stall_after):
            yield next(batches)
        data_source_stalls()

    if args.stall_after:
        train_lib.make_iterator = stalling_iterator
    else:
        train_lib.make_iterator = synthetic
    train_lib.train(config, args.workdir)
    print("training finished")


if __name__ == "__main__":
    main()
