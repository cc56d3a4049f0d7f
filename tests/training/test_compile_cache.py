"""The persistent compilation cache is on by default, under the workdir, and can be moved or turned off."""
import os
import subprocess
import sys

from stiv_jax.training import compile_cache

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cache_dir_defaults_under_the_workdir_local_or_gcs():
    assert compile_cache.cache_dir("", "runs/demo") == os.path.join("runs/demo", "compile_cache")
    assert compile_cache.cache_dir("", "gs://bucket/runs/a/") == "gs://bucket/runs/a/compile_cache"
    assert compile_cache.cache_dir("gs://bucket/xla", "runs/demo") == "gs://bucket/xla"
    assert compile_cache.cache_dir("None", "runs/demo") is None
    assert compile_cache.cache_dir("", None) == os.path.expanduser("~/.cache/stiv_jax/compile_cache")


def test_the_environment_variable_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert compile_cache.enable(None, workdir=str(tmp_path / "run")) == str(tmp_path / "env")
    assert not (tmp_path / "run").exists()


def test_a_fresh_process_writes_its_compiles_under_the_workdir_and_a_second_reads_them(tmp_path):
    script = ("import sys, jax, jax.numpy as jnp, ml_collections\n"
              "from stiv_jax.training import compile_cache\n"
              "config = ml_collections.ConfigDict(dict(compilation_cache_dir=''))\n"
              "print(compile_cache.enable(config, workdir=sys.argv[1]))\n"
              "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
              "f = jax.jit(lambda x: jnp.sin(x) @ x.T)\n"
              "print(float(f(jnp.ones((64, 64))).sum()))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    run = lambda: subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], env=env,  # noqa: E731
                                 capture_output=True, text=True, check=True).stdout.split()
    first = run()
    cache = tmp_path / "run" / "compile_cache"
    assert first[0] == str(cache)
    entries = sorted(os.listdir(cache))
    assert entries, "nothing was written to the cache"
    assert run()[1] == first[1] and sorted(os.listdir(cache)) == entries   # read back, not compiled anew
