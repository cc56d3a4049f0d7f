"""Runs ``stiv_jax.train.train`` in a child process for the resume, preemption and multi-process tests.

  python train_driver.py CONFIG_JSON WORKDIR [--kill-after-save=STEP] [--synthetic-data] [--dump-params=NPZ]

--kill-after-save: SIGKILL this process right after the asynchronous save of STEP starts (a crash mid-save).
--synthetic-data: feed each process its rows of deterministic global batches (trainer_testlib.synthetic_batch).
--dump-params: gather the final parameters and write them (process 0) to an .npz.
"""
import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("config_json")
    parser.add_argument("workdir")
    parser.add_argument("--kill-after-save", type=int, default=0)
    parser.add_argument("--synthetic-data", action="store_true")
    parser.add_argument("--dump-params", default="")
    args = parser.parse_args()

    from stiv_jax.launch import distributed
    distributed.initialize()
    import trainer_testlib
    from stiv_jax import train as train_lib
    config = trainer_testlib.config_from_json(args.config_json)
    if args.synthetic_data:
        train_lib.make_iterator = trainer_testlib.synthetic_iterator_factory(config)
    if args.kill_after_save:
        original_save = train_lib.ckpt.save

        def save_then_die(manager, step, **kwargs):
            original_save(manager, step, **kwargs)
            if step == args.kill_after_save:
                os.kill(os.getpid(), signal.SIGKILL)
        train_lib.ckpt.save = save_then_die
    state = train_lib.train(config, args.workdir)
    if args.dump_params:
        trainer_testlib.dump_params(state.params, args.dump_params)


if __name__ == "__main__":
    main()
