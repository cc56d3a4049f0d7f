"""JAX's persistent compilation cache, on by default for ``train``, ``compile`` and ``sample``.

A restart after a preemption loads the train step's executable instead of compiling it again (measured on the
demo: see BENCHMARKS.md ``## compile cache``). Where (``config.compilation_cache_dir``):
  ""        ``WORKDIR/compile_cache`` (a ``gs://`` workdir gives a ``gs://`` cache, shared by every host of a
            pod), or ``~/.cache/stiv_jax/compile_cache`` for commands without a workdir (``stiv_jax.compile``);
  a path    that directory (local or ``gs://...``);
  "none"    off.
An explicit ``JAX_COMPILATION_CACHE_DIR`` in the environment (the tests' conftest sets one) wins over all three.
"""
from __future__ import annotations

import os

import jax

DIRNAME = "compile_cache"
DEFAULT_HOME = os.path.join("~", ".cache", "stiv_jax", DIRNAME)
# Executables that compile faster than this are not worth a file round trip (JAX's default is 1 s; the demo's
# tiny eval functions compile in well under it, the train step in tens of seconds).
MIN_COMPILE_SECS = 1.0


def cache_dir(setting: str | None, workdir: str | None) -> str | None:
    """The cache directory for ``config.compilation_cache_dir`` = ``setting`` (None when off)."""
    setting = (setting or "").strip()
    if setting.lower() == "none":
        return None
    if setting:
        return setting
    if workdir:
        return workdir.rstrip("/") + "/" + DIRNAME if "://" in workdir else os.path.join(workdir, DIRNAME)
    return os.path.expanduser(DEFAULT_HOME)


def enable(config=None, *, workdir: str | None = None) -> str | None:
    """Turns the persistent cache on (before the first compile); returns the directory in use, or None.

    ``config``: an experiment config (reads ``compilation_cache_dir``; None: the default).
    """
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    setting = config.compilation_cache_dir if config is not None else ""
    path = cache_dir(setting, workdir)
    if path is None:
        return None
    if "://" not in path:
        os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    return path
