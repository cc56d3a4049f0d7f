r"""Runs a multi-process JAX job on this machine: N processes joined by jax.distributed over localhost, CPU only.

The same code path as a TPU pod (one process per host, per-host data slices, global arrays, a shared
checkpoint directory), small enough for a laptop or CI:

  python -m stiv_jax.launch.local --num_processes=2 -- \
      --config=experiments/demo.py --workdir=runs/demo_2proc --config.total_steps=2

Arguments after ``--`` go to the module (default ``stiv_jax.train``). Each process gets
``--devices_per_process`` fake CPU devices, ``JAX_PLATFORMS=cpu`` and the ``STIV_*`` variables that
``stiv_jax.launch.distributed.initialize`` reads. Output lines are prefixed with ``[p<i>]``. When one process
fails, the others are stopped, the launcher says which process died and how (``process 1 (pid N) was killed by
SIGKILL``) and exits with the first failure's status (128 + the signal number for a signal, as a shell reports
it). ``--dry-run`` prints each process's environment and command instead of starting them.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

from stiv_jax.launch import distributed


def free_port() -> int:
    """A TCP port on localhost that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_environments(num_processes: int, *, port: int, devices_per_process: int,
                         base_env: dict[str, str] | None = None,
                         init_timeout_s: float | None = None) -> list[dict[str, str]]:
    """The environment of each of ``num_processes`` local processes (see the module doc)."""
    base = dict(os.environ if base_env is None else base_env)
    xla_flags = [f for f in base.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
    xla_flags.append(f"--xla_force_host_platform_device_count={devices_per_process}")
    envs = []
    for process_id in range(num_processes):
        env = dict(base)
        env.update({
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": " ".join(xla_flags),
            distributed.ENV_COORDINATOR: f"localhost:{port}",
            distributed.ENV_NUM_PROCESSES: str(num_processes),
            distributed.ENV_PROCESS_ID: str(process_id),
            distributed.ENV_EXPECTED: str(num_processes),
            "PYTHONUNBUFFERED": "1",
        })
        if init_timeout_s is not None:
            env[distributed.ENV_INIT_TIMEOUT] = str(init_timeout_s)
        envs.append(env)
    return envs


def describe_exit(code: int) -> tuple[str, int]:
    """``(how a child ended, the job status)`` from ``Popen.returncode`` (negative: killed by that signal)."""
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}", 128 - code
    return f"exited with status {code}", code


def _pump(stream, prefix: str, sink) -> None:
    for line in iter(stream.readline, b""):
        sink.write(prefix + line.decode(errors="replace"))
        sink.flush()
    stream.close()


def launch(num_processes: int, module_args: list[str], *, module: str = "stiv_jax.train",
           devices_per_process: int = 4, init_timeout_s: float | None = None, dry_run: bool = False,
           out=None) -> int:
    """Starts the processes, streams their prefixed output to ``out``, returns the job's exit status."""
    out = sys.stdout if out is None else out
    if num_processes < 1:
        raise ValueError(f"--num_processes must be >= 1, got {num_processes}")
    port = free_port()
    envs = process_environments(num_processes, port=port, devices_per_process=devices_per_process,
                                init_timeout_s=init_timeout_s)
    command = [sys.executable, "-m", module, *module_args]
    launched_keys = ("JAX_PLATFORMS", "XLA_FLAGS", distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES,
                     distributed.ENV_PROCESS_ID, distributed.ENV_EXPECTED)
    if dry_run:
        for env in envs:
            assignments = [f"{k}={env[k]}" for k in launched_keys]
            out.write(shlex.join(["env", *assignments, *command]) + "\n")
        return 0

    procs, pumps = [], []
    for process_id, env in enumerate(envs):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        pump = threading.Thread(target=_pump, args=(proc.stdout, f"[p{process_id}] ", out), daemon=True)
        pump.start()
        procs.append(proc)
        pumps.append(pump)

    status = 0
    try:
        remaining = set(range(num_processes))
        while remaining:
            for i in sorted(remaining):
                code = procs[i].poll()
                if code is None:
                    continue
                remaining.discard(i)
                if code != 0 and status == 0:
                    how, status = describe_exit(code)
                    out.write(f"[launcher] process {i} (pid {procs[i].pid}) {how}; stopping the others\n")
                    for j in remaining:
                        procs[j].terminate()
            time.sleep(0.1)
    except KeyboardInterrupt:
        for proc in procs:
            proc.terminate()
        status = 130
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pump in pumps:
            pump.join(timeout=5)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        split = argv.index("--")
        own, module_args = argv[:split], argv[split + 1:]
    else:
        own, module_args = argv, []
    parser = argparse.ArgumentParser(prog="python -m stiv_jax.launch.local",
                                     description=__doc__.split("\n")[0],
                                     epilog="Arguments after -- are passed to the module.")
    parser.add_argument("--num_processes", type=int, default=2, help="processes to start")
    parser.add_argument("--devices_per_process", type=int, default=4, help="fake CPU devices per process")
    parser.add_argument("--module", default="stiv_jax.train", help="python module each process runs")
    parser.add_argument("--init_timeout_s", type=float, default=None,
                        help=f"seconds to wait for all processes to join (default {distributed.ENV_INIT_TIMEOUT} "
                             "or 300)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print each process's command instead of running it")
    args = parser.parse_args(own)
    return launch(args.num_processes, module_args, module=args.module, devices_per_process=args.devices_per_process,
                  init_timeout_s=args.init_timeout_s, dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
