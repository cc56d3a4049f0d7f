"""Multi-process start-up: the one place the trainer calls ``jax.distributed.initialize``.

On TPU pods (and under most schedulers) ``jax.distributed.initialize()`` finds the coordinator by itself; for
explicit launches (tests, GPU/CPU clusters) it reads ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID``. Single-process runs skip it.
"""
from __future__ import annotations

import os

import jax

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def is_initialized() -> bool:
    from jax._src import distributed
    return distributed.global_state.client is not None


def maybe_initialize() -> bool:
    """Initializes the multi-process runtime once when the environment asks for it; returns whether it did.

    Explicit ``JAX_COORDINATOR_ADDRESS`` + ``JAX_NUM_PROCESSES`` + ``JAX_PROCESS_ID`` win; otherwise a TPU
    pod host (``TPU_WORKER_HOSTNAMES`` listing several hosts) uses jax's auto-detection.
    """
    if is_initialized():
        return False
    address = os.environ.get(ENV_COORDINATOR)
    if address:
        missing = [k for k in (ENV_NUM_PROCESSES, ENV_PROCESS_ID) if k not in os.environ]
        if missing:
            raise ValueError(f"{ENV_COORDINATOR} is set but {missing} are not; set all three for a multi-process run")
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
        if num_processes <= 1:
            return False
        jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                                   process_id=int(os.environ[ENV_PROCESS_ID]))
        return True
    hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h and h != "localhost"]
    if len(hosts) > 1:
        jax.distributed.initialize()
        return True
    return False
