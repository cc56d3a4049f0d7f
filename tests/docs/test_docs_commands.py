"""Runs every CPU-runnable shell block of README.md and docs/*.md, so the guide cannot rot.

Marker convention (see docs/README.md): the line right before a ```bash fence is

  <!-- cpu-test -->                       the block runs here, on the CPU, at tiny scale;
  <!-- not-cpu-runnable: REASON -->       the block is shown only (it needs a pod, a cluster, a GPU ...).

In docs/*.md every ```bash block must carry one of the two (an unmarked block fails the test). In README.md
only marked blocks are considered. Blocks run with `bash -euo pipefail`, in page order, in one sandbox shared by
all pages (a copy-free view of the repository: `experiments/`, `stiv_jax/`, `launch/` linked in, `runs/` fresh),
so a page can use what an earlier page produced (docs/README.md lists the order).

Tiny scale: every `python -m stiv_jax.train` / `python -m stiv_jax.launch.local` command gets TINY_TRAIN appended
(a 1-block, 32-wide model on 32x32, 4-frame clips, batch 8), plus `--config.total_steps=4` when the command sets no step
count. XLA compiles are cached across blocks (JAX_COMPILATION_CACHE_DIR).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(REPO, "docs")
CPU_MARK = "<!-- cpu-test -->"
NOT_CPU_MARK = re.compile(r"<!-- not-cpu-runnable: .+ -->")
TINY_TRAIN = ["--config.model.depth=1", "--config.model.width=32", "--config.model.num_heads=2",
              "--config.text.dim=32", "--config.data.batch_size=8", "--config.data.frames=4",
              "--config.data.resolution=32", "--config.log_every=1"]
DEFAULT_STEPS = "--config.total_steps=4"
BLOCK_TIMEOUT_S = 900


@dataclass
class Block:
    page: str        # path relative to the repository
    line: int        # 1-based line of the opening fence
    marker: str      # "cpu", "not-cpu" or "" (unmarked)
    text: str


def page_order() -> list[str]:
    """README.md, then the docs pages in the order docs/README.md links them, then any others."""
    index = os.path.join(DOCS, "README.md")
    linked = re.findall(r"\]\(([\w-]+\.md)\)", open(index).read()) if os.path.exists(index) else []
    pages = ["README.md", "docs/README.md"] + [f"docs/{p}" for p in dict.fromkeys(linked)]
    others = sorted(f"docs/{p}" for p in os.listdir(DOCS) if p.endswith(".md")) if os.path.isdir(DOCS) else []
    return [p for p in dict.fromkeys(pages + others) if os.path.exists(os.path.join(REPO, p))]


def extract_blocks(page: str) -> list[Block]:
    lines = open(os.path.join(REPO, page)).read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() in ("```bash", "```sh", "```shell"):
            previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            marker = "cpu" if previous == CPU_MARK else "not-cpu" if NOT_CPU_MARK.fullmatch(previous) else ""
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            blocks.append(Block(page, i + 1, marker, "\n".join(lines[i + 1:end])))
            i = end
        i += 1
    return blocks


def tiny(block_text: str) -> str:
    """Appends the tiny-scale overrides to every training command of a block."""
    logical = re.sub(r"\\\n\s*", " ", block_text)
    out = []
    for line in logical.splitlines():
        trains = None if line.lstrip().startswith("#") else re.search(r"-m stiv_jax\.(train|launch\.local)\b", line)
        if trains and not re.search(r"--module=(?!stiv_jax\.train\b)", line):
            extra = TINY_TRAIN + ([] if "--config.total_steps=" in line else [DEFAULT_STEPS])
            if "stiv_jax.launch.local" in line and " -- " not in line:
                extra = ["--"] + extra
            # Insert before the first pipe / redirection / command separator that follows the command.
            start = trains.end()
            operator = re.search(r"\s(\||>|2>|&>|&&|;|\|\|)(\s|$)", line[start:])
            cut = start + operator.start() if operator else len(line.rstrip())
            line = line[:cut] + " " + " ".join(extra) + line[cut:]
        out.append(line)
    return "\n".join(out)


ALL_BLOCKS = [b for page in page_order() for b in extract_blocks(page)]
CPU_BLOCKS = [b for b in ALL_BLOCKS if b.marker == "cpu"]


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs_sandbox")
    for name in ("experiments", "stiv_jax", "launch", "setup.py", "Makefile"):
        if os.path.exists(os.path.join(REPO, name)):
            os.symlink(os.path.join(REPO, name), root / name)
    (root / "runs").mkdir()
    env = dict(os.environ)
    env.update({
        "PATH": os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        "PYTHONPATH": REPO,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
        "JAX_COMPILATION_CACHE_DIR": str(root / ".jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
        "PYTHONUNBUFFERED": "1",
    })
    return root, env


def test_every_docs_shell_block_is_marked_runnable_or_not():
    unmarked = [f"{b.page}:{b.line}" for b in ALL_BLOCKS if b.page.startswith("docs/") and not b.marker]
    assert not unmarked, (f"mark these ```bash blocks with {CPU_MARK} or <!-- not-cpu-runnable: REASON --> on "
                          f"the line before the fence: {unmarked}")


def test_the_guide_has_cpu_runnable_commands_for_every_page():
    pages = {b.page for b in CPU_BLOCKS}
    index_pages = ("docs/README.md", "docs/README_draft.md")  # the guide's index; the proposed top-level README
    missing = [p for p in page_order() if p.startswith("docs/") and p not in index_pages and p not in pages]
    assert not missing, f"docs pages without a single CPU-tested command: {missing}"


def test_tiny_rewrite_appends_overrides_and_keeps_explicit_steps():
    rewritten = tiny("python -m stiv_jax.train --config=experiments/demo.py \\\n    --workdir=runs/a "
                     "--config.total_steps=20 | tee log\npython -m stiv_jax.launch.local --num_processes=2\n"
                     "python -m stiv_jax.launch.local --module=stiv_jax.launch.distributed")
    first, second, third = rewritten.splitlines()
    assert first.endswith("--config.total_steps=20 " + " ".join(TINY_TRAIN) + " | tee log")
    assert second.endswith("--num_processes=2 -- " + " ".join(TINY_TRAIN) + " " + DEFAULT_STEPS)
    assert third == "python -m stiv_jax.launch.local --module=stiv_jax.launch.distributed"


@pytest.mark.parametrize("block", CPU_BLOCKS, ids=[f"{b.page}:{b.line}" for b in CPU_BLOCKS])
def test_cpu_block_runs(block, sandbox):
    root, env = sandbox
    script = tiny(block.text)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=root, env=env, capture_output=True,
                            text=True, timeout=BLOCK_TIMEOUT_S)
    assert result.returncode == 0, (f"{block.page}:{block.line} failed (status {result.returncode})\n"
                                    f"--- ran ---\n{script}\n--- output tail ---\n"
                                    f"{(result.stdout + result.stderr)[-4000:]}")
