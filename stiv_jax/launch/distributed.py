"""Initialises ``jax.distributed`` exactly once for multi-process jobs, and fails loudly when hosts are missing.

Call :func:`initialize` first thing in an entry point, before anything touches a jax backend. It reads the launch
environment:

* our local launcher (``python -m stiv_jax.launch.local``): ``STIV_COORDINATOR_ADDRESS``, ``STIV_NUM_PROCESSES``,
  ``STIV_PROCESS_ID``;
* SLURM (``launch/slurm_gpu.sh``): ``SLURM_NTASKS`` > 1, coordinator and ids auto-detected by jax;
* Cloud TPU VMs and GKE TPU pods (``launch/tpu_vm.sh``, ``launch/xpk.sh``): TPU device files or
  ``TPU_WORKER_HOSTNAMES`` / ``MEGASCALE_*``, everything auto-detected by jax from the TPU metadata;
* ``STIV_EXPECTED_PROCESSES``: the process count the launcher intended (the launch scripts export it).

Two failure modes of multi-host jobs become clear errors instead of silent hangs (jax issue #22436):

* a job started on one host only (or a host that never comes up): ``jax.distributed.initialize`` blocks waiting
  for the others. A timer (``STIV_INIT_TIMEOUT_S``, default 300 s) prints which coordinator and how many
  processes it waited for, then exits the process with code :data:`EXIT_INIT_TIMEOUT` (jax's own deadline
  would abort with a C++ check failure that names neither);
* a process count other than intended (``STIV_EXPECTED_PROCESSES`` vs ``jax.process_count()``):
  :class:`MultiHostLaunchError` naming both numbers.
"""
from __future__ import annotations

import dataclasses
import glob
import os
import sys
import threading
from typing import Mapping

import jax

ENV_COORDINATOR = "STIV_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "STIV_NUM_PROCESSES"
ENV_PROCESS_ID = "STIV_PROCESS_ID"
ENV_EXPECTED = "STIV_EXPECTED_PROCESSES"
ENV_INIT_TIMEOUT = "STIV_INIT_TIMEOUT_S"
DEFAULT_INIT_TIMEOUT_S = 300.0
# Exit status when not every process joined in time (EX_TEMPFAIL: an orchestrator may retry).
EXIT_INIT_TIMEOUT = 75
# jax's own deadline is set this much later than ours, so our message wins the race.
_JAX_DEADLINE_MARGIN_S = 60


class MultiHostLaunchError(RuntimeError):
    """The processes that joined the job are not the ones the launch intended."""


@dataclasses.dataclass(frozen=True)
class LaunchEnvironment:
    """How this process was launched.

    Attributes:
      kind: ``single`` (no jax.distributed), ``local`` (our launcher), ``slurm``, ``tpu`` (Cloud TPU / GKE) or
        ``auto`` (only ``STIV_EXPECTED_PROCESSES`` > 1: let jax's cluster auto-detection find the rest).
      coordinator_address: ``host:port`` when known before initialisation.
      num_processes: processes the launch environment announces, when known.
      process_id: this process's index, when known.
      expected_processes: ``STIV_EXPECTED_PROCESSES``, when set.
    """
    kind: str
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    expected_processes: int | None = None

    @property
    def multi_process(self) -> bool:
        return self.kind != "single"


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise MultiHostLaunchError(f"environment variable {name}={value!r} is not an integer") from None


def tpu_devices_present() -> bool:
    """True on a Cloud TPU VM / TPU pod node (TPU chips show up as /dev/accel* or /dev/vfio/<n>)."""
    return bool(glob.glob("/dev/accel*") or [p for p in glob.glob("/dev/vfio/*") if p[-1].isdigit()])


def detect_launch_environment(environ: Mapping[str, str] | None = None, *,
                              on_tpu: bool | None = None) -> LaunchEnvironment:
    """Reads how this process was launched from ``environ`` (default ``os.environ``); see the module doc."""
    environ = os.environ if environ is None else environ
    expected = _int_env(environ, ENV_EXPECTED)
    if environ.get(ENV_COORDINATOR):
        missing = [n for n in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if environ.get(n) in (None, "")]
        if missing:
            raise MultiHostLaunchError(f"{ENV_COORDINATOR} is set but {', '.join(missing)} is not: start "
                                       "processes with `python -m stiv_jax.launch.local` or set all three")
        return LaunchEnvironment("local", environ[ENV_COORDINATOR], _int_env(environ, ENV_NUM_PROCESSES),
                                 _int_env(environ, ENV_PROCESS_ID), expected)
    slurm_tasks = _int_env(environ, "SLURM_NTASKS") or _int_env(environ, "SLURM_NPROCS")
    if environ.get("SLURM_JOB_ID") and slurm_tasks and slurm_tasks > 1:
        nodes = environ.get("SLURM_STEP_NODELIST") or environ.get("SLURM_JOB_NODELIST") or "?"
        return LaunchEnvironment("slurm", f"first node of {nodes}", slurm_tasks,
                                 _int_env(environ, "SLURM_PROCID"), expected)
    workers = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    num_slices = _int_env(environ, "MEGASCALE_NUM_SLICES") or 1
    if on_tpu is None:
        on_tpu = tpu_devices_present()
    if len(workers) > 1 or num_slices > 1 or on_tpu:
        coordinator = environ.get("MEGASCALE_COORDINATOR_ADDRESS") or (workers[0] if workers else None)
        announced = len(workers) * num_slices if workers else None
        return LaunchEnvironment("tpu", coordinator, announced, _int_env(environ, "TPU_WORKER_ID"), expected)
    if expected is not None and expected > 1:
        return LaunchEnvironment("auto", None, None, None, expected)
    return LaunchEnvironment("single", expected_processes=expected)


_lock = threading.Lock()
_initialized_env: LaunchEnvironment | None = None


def _timeout_message(env: LaunchEnvironment, timeout_s: float) -> str:
    waited_for = env.num_processes or env.expected_processes
    who = f"{waited_for} processes" if waited_for else "all processes"
    coordinator = env.coordinator_address or "(auto-detected by jax)"
    me = f"process {env.process_id}" if env.process_id is not None else "this process"
    return (
        f"stiv_jax: jax.distributed.initialize did not finish within {timeout_s:.0f} s: {me} waited for {who} "
        f"at coordinator {coordinator} (launch kind: {env.kind}).\n"
        "  Likely causes: the job was started on one host only (a multi-host job must run on every host at once, "
        "e.g. `launch/tpu_vm.sh train` runs on --worker=all; a hand-run command on one worker waits forever), "
        "a host is down or still booting, or the coordinator address is unreachable from this host.\n"
        f"  If hosts are just slow to start, raise {ENV_INIT_TIMEOUT} (now {timeout_s:.0f}).")


def _start_deadline(env: LaunchEnvironment, timeout_s: float) -> threading.Event:
    """Exits the process with a clear message if ``done`` is not set within ``timeout_s`` seconds."""
    done = threading.Event()

    def watch():
        if not done.wait(timeout_s):
            sys.stderr.write(_timeout_message(env, timeout_s) + "\n")
            sys.stderr.flush()
            os._exit(EXIT_INIT_TIMEOUT)  # the main thread is stuck inside C++: no exception can reach it

    threading.Thread(target=watch, name="stiv-distributed-init-deadline", daemon=True).start()
    return done


def check_process_count(expected: int | None, actual: int | None = None) -> None:
    """Raises :class:`MultiHostLaunchError` unless ``actual`` (default ``jax.process_count()``) is ``expected``."""
    if expected is None:
        return
    actual = jax.process_count() if actual is None else actual
    if actual == expected:
        return
    if actual < expected:
        reason = (f"{expected - actual} host(s) are missing. If this is a single-host run, unset {ENV_EXPECTED}; "
                  "otherwise start the job on every host at once (launch/tpu_vm.sh train, launch/xpk.sh create)")
    else:
        reason = (f"{actual - expected} more host(s) joined than {ENV_EXPECTED} announces: check --accelerator "
                  "and --num_slices of the launch command")
    raise MultiHostLaunchError(
        f"this job expects {expected} JAX processes ({ENV_EXPECTED}={expected}) but jax.process_count() is "
        f"{actual}: {reason}")


def initialize(*, expected_processes: int | None = None, timeout_s: float | None = None,
               environ: Mapping[str, str] | None = None) -> LaunchEnvironment:
    """Initialises ``jax.distributed`` once if this is a multi-process launch; checks the process count.

    Args:
      expected_processes: processes this job must have (default: ``STIV_EXPECTED_PROCESSES``).
      timeout_s: seconds to wait for every process to join (default: ``STIV_INIT_TIMEOUT_S`` or 300).
      environ: launch environment (default ``os.environ``).

    Returns:
      The detected :class:`LaunchEnvironment`. Calling again returns the first result without re-initialising.
    """
    global _initialized_env
    with _lock:
        if _initialized_env is not None:
            return _initialized_env
        environ = os.environ if environ is None else environ
        env = detect_launch_environment(environ)
        if expected_processes is not None:
            env = dataclasses.replace(env, expected_processes=expected_processes)
        if timeout_s is None:
            timeout_s = float(environ.get(ENV_INIT_TIMEOUT) or DEFAULT_INIT_TIMEOUT_S)
        if env.multi_process and not jax.distributed.is_initialized():
            kwargs = {}
            if env.kind == "local":
                kwargs = dict(coordinator_address=env.coordinator_address, num_processes=env.num_processes,
                              process_id=env.process_id)
            done = _start_deadline(env, timeout_s)
            try:
                jax.distributed.initialize(initialization_timeout=int(timeout_s) + _JAX_DEADLINE_MARGIN_S,
                                           **kwargs)
            except ValueError as e:  # auto-detection found no cluster
                raise MultiHostLaunchError(
                    f"{ENV_EXPECTED}={env.expected_processes} asks for a multi-process job, but no launch "
                    f"environment was found (jax: {e}). Start it with launch/tpu_vm.sh, launch/xpk.sh, "
                    "launch/slurm_gpu.sh or `python -m stiv_jax.launch.local`, or unset "
                    f"{ENV_EXPECTED} for a single-process run") from e
            finally:
                done.set()
        check_process_count(env.expected_processes)
        _initialized_env = env
        return env


def main(argv: list[str] | None = None) -> int:
    """Pod smoke test: join the job, run one cross-host collective, print what this process sees.

      python -m stiv_jax.launch.local --num_processes=2 --module=stiv_jax.launch.distributed
      launch/tpu_vm.sh ... then on all workers: python3 -m stiv_jax.launch.distributed
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stiv_jax.launch.distributed", description=main.__doc__)
    parser.add_argument("--expected_processes", type=int, default=None,
                        help=f"processes the job must have (default {ENV_EXPECTED})")
    args = parser.parse_args(argv)
    try:
        env = initialize(expected_processes=args.expected_processes)
    except MultiHostLaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    import numpy as np
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.asarray([jax.process_index()], np.int32))
    print(f"launch={env.kind} process {jax.process_index()} of {jax.process_count()}: "
          f"{jax.local_device_count()} local / {jax.device_count()} global {jax.default_backend()} devices; "
          f"all-gather of process ids = {np.asarray(gathered).ravel().tolist()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
