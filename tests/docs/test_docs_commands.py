"""Runs every CPU-runnable code block of README.md and docs/*.md, and checks every command's flags, so the guide
cannot rot.

Marker convention (docs/README.md): the line right before a ```bash (or ```python) fence is one of

  <!-- cpu-test -->                 the block runs here, on the CPU, exactly as written;
  <!-- cpu-test: ARGS -->           the block runs with ARGS (tiny-scale overrides such as
                                    --config.total_steps=2) appended to each `python -m stiv_jax.train` command of it
                                    (after `--` for `python -m stiv_jax.launch.local`); nothing else changes;
  <!-- not-cpu-runnable: REASON -->  the block is shown only (it needs a pod, a cluster, a GPU, hours ...).

An unmarked block fails the test. Blocks run with `bash -euo pipefail` (python blocks with the interpreter), in page
order, in one sandbox shared by all pages (`experiments/`, `stiv_jax/`, `launch/` linked in, `runs/` fresh), so a
page can use what an earlier page produced (docs/README.md gives the order).

Every block, runnable or not, is also checked statically: each `python -m stiv_jax.MODULE` command names an existing
module and only flags that module defines; each `--config.KEY=` override names a key of the config it loads; each
`launch/SCRIPT` option is one the script parses. XLA compiles are cached across blocks (JAX_COMPILATION_CACHE_DIR)
and skip the CPU optimisation passes.
"""
from __future__ import annotations

import functools
import importlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(REPO, "docs")
MARKER = re.compile(r"<!-- (cpu-test|not-cpu-runnable)(?::\s*(.*?))?\s*-->")
FENCES = {"```bash": "bash", "```sh": "bash", "```shell": "bash", "```python": "python"}
BLOCK_TIMEOUT_S = 900
# absl's own flags, accepted by every absl entry point.
ABSL_FLAGS = {"verbosity", "v", "logtostderr", "alsologtostderr", "log_dir", "helpfull", "helpshort", "help"}


@dataclass
class Block:
    page: str        # path relative to the repository
    line: int        # 1-based line of the opening fence
    language: str    # "bash" or "python"
    marker: str      # "cpu-test", "not-cpu-runnable" or "" (unmarked)
    argument: str    # ARGS of `cpu-test: ARGS`, REASON of `not-cpu-runnable: REASON`
    text: str

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"


def page_order() -> list[str]:
    """README.md, docs/README.md, then the docs pages in the order docs/README.md links them, then any others."""
    index = os.path.join(DOCS, "README.md")
    linked = re.findall(r"\]\(([\w-]+\.md)\)", open(index).read()) if os.path.exists(index) else []
    pages = ["README.md", "docs/README.md"] + [f"docs/{p}" for p in dict.fromkeys(linked)]
    others = sorted(f"docs/{p}" for p in os.listdir(DOCS) if p.endswith(".md")) if os.path.isdir(DOCS) else []
    return [p for p in dict.fromkeys(pages + others) if os.path.exists(os.path.join(REPO, p))]


def extract_blocks(page: str) -> list[Block]:
    lines = open(os.path.join(REPO, page)).read().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        language = FENCES.get(lines[i].strip())
        if language:
            previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            match = MARKER.fullmatch(previous)
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            blocks.append(Block(page, i + 1, language, match.group(1) if match else "",
                                (match.group(2) or "") if match else "", "\n".join(lines[i + 1:end])))
            i = end
        i += 1
    return blocks


def logical_lines(text: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    return re.sub(r"\s*\\\n\s*", " ", text).splitlines()


def with_overrides(block: Block) -> str:
    """The block as it runs: ARGS of `cpu-test: ARGS` appended to each training command (see the module doc)."""
    if block.language != "bash" or not block.argument:
        return block.text
    out = []
    for line in logical_lines(block.text):
        command = None if line.lstrip().startswith("#") else re.search(r"-m stiv_jax\.(train|launch\.local)\b", line)
        if command and not re.search(r"--module=(?!stiv_jax\.train\b)", line):
            start = command.end()
            operator = re.search(r"\s(\||>|2>|&>|&&|;|\|\|)(\s|$)", line[start:])  # first pipe / redirection
            cut = start + operator.start() if operator else len(line.rstrip())
            extra = block.argument
            if "stiv_jax.launch.local" in line and " -- " not in line[:cut]:
                extra = "-- " + extra
            line = line[:cut].rstrip() + " " + extra + line[cut:]
        out.append(line)
    return "\n".join(out)


ALL_BLOCKS = [b for page in page_order() for b in extract_blocks(page)]
CPU_BLOCKS = [b for b in ALL_BLOCKS if b.marker == "cpu-test"]


# ----------------------------------------------------------------------------------------- static command checks
@functools.lru_cache(maxsize=None)
def module_file(module: str) -> str | None:
    path = os.path.join(REPO, *module.split("."))
    return path + ".py" if os.path.exists(path + ".py") else None


@functools.lru_cache(maxsize=None)
def defined_flags(module: str) -> frozenset[str]:
    """Flags a `python -m` module accepts: absl DEFINE_* / argparse add_argument, in it or the stiv_jax modules
    it imports (shared flag definitions such as build_shards.define_flags)."""
    source = open(module_file(module)).read()
    files = [source]
    for package, names in re.findall(r"^from (stiv_jax[\w.]*) import ([\w, ]+)", source, re.M):
        for name in (n.split(" as ")[0].strip() for n in names.split(",")):
            for candidate in (f"{package}.{name}", package):
                if module_file(candidate):
                    files.append(open(module_file(candidate)).read())
                    break
    names = set(ABSL_FLAGS)
    for text in files:
        names.update(re.findall(r"DEFINE_\w+\(\s*[\"'](\w+)[\"']", text))
        for group in re.findall(r"add_argument\(([^)]*)\)", text):
            names.update(n.replace("-", "_") for n in re.findall(r"[\"']--([\w-]+)[\"']", group))
    names.update("no" + n for n in list(names))  # absl booleans: --noema
    return frozenset(names)


def config_has(config, dotted: str) -> bool:
    node = config
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return False
    return True


def load_config(spec: str):
    path, _, arg = spec.partition(":")
    sys.path.insert(0, REPO)
    module = importlib.import_module(path[:-3].replace("/", "."))
    return module.get_config(arg) if arg else module.get_config()


def command_problems(argv: list[str]) -> list[str]:
    """What is wrong with one command's flags (see the module doc); [] when nothing."""
    problems = []
    if len(argv) >= 3 and argv[0] in ("python", "python3") and argv[1] == "-m" and argv[2].startswith("stiv_jax"):
        module, args = argv[2], argv[3:]
        if module_file(module) is None:
            return [f"no module {module}"]
        if module == "stiv_jax.launch.local" and "--" in args:  # after `--`: the training command's flags
            split = args.index("--")
            trained = [a for a in args if a.startswith("--module=")] or ["--module=stiv_jax.train"]
            problems += command_problems(["python", "-m", trained[0].split("=", 1)[1], *args[split + 1:]])
        args = args[:args.index("--")] if "--" in args else args  # after `--`: arguments for another program
        flags = defined_flags(module)
        config = None
        for arg in args:
            if not arg.startswith("--"):
                continue
            name, _, value = arg[2:].partition("=")
            if name.startswith("config."):
                if "config" not in flags:
                    problems.append(f"{module} takes no --config overrides ({arg})")
                    continue
                spec = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
                if spec and re.fullmatch(r"experiments/\w+\.py(:.*)?", spec):
                    config = config or load_config(spec)
                    if not config_has(config, name[len("config."):]):
                        problems.append(f"{arg}: the config {spec} has no key {name[len('config.'):]}")
            elif name not in flags:
                problems.append(f"{module} defines no flag --{name}")
    elif argv and re.fullmatch(r"(\./)?launch/\w+\.(sh|sbatch)", argv[0]):
        script = os.path.join(REPO, argv[0].lstrip("./"))
        if not os.path.exists(script):
            return [f"no script {argv[0]}"]
        parsed = open(script).read()
        args = argv[1:]
        train_args = args[args.index("--") + 1:] if "--" in args else []
        args = args[:args.index("--")] if "--" in args else args
        for arg in args:
            if arg.startswith("--"):
                name = arg.split("=", 1)[0]
                if not re.search(re.escape(name) + r"(=\*)?[ |)]", parsed):
                    problems.append(f"{argv[0]} does not parse {name}")
        config = next((a for a in args if a.startswith("--config=")), "--config=experiments/demo.py")
        problems += command_problems(["python", "-m", "stiv_jax.train", config, *train_args])
    return problems


def shell_commands(block: Block) -> list[list[str]]:
    """The argv of every simple command of a bash block (variables and substitutions left as words)."""
    commands = []
    for line in logical_lines(block.text):
        line = line.split(" #", 1)[0]
        if line.lstrip().startswith("#"):
            continue
        for part in re.split(r"\s(?:\||&&|\|\||;)\s", line):
            try:
                words = shlex.split(part)
            except ValueError:
                continue
            while words and re.fullmatch(r"\w+=.*", words[0]) or words[:1] == ["env"]:
                words = words[1:]
            commands.append([w for w in words if not re.fullmatch(r"\d?>.*|<.*", w)])
    return commands


def test_every_block_is_marked_runnable_or_not():
    unmarked = [b.name for b in ALL_BLOCKS if not b.marker]
    assert not unmarked, ("mark these code blocks with <!-- cpu-test -->, <!-- cpu-test: TINY-SCALE ARGS --> or "
                          f"<!-- not-cpu-runnable: REASON --> on the line before the fence: {unmarked}")
    assert all(b.argument for b in ALL_BLOCKS if b.marker == "not-cpu-runnable"), "give every skip its reason"


def test_every_docs_page_runs_at_least_one_command():
    pages = {b.page for b in CPU_BLOCKS}
    missing = [p for p in page_order() if p.startswith("docs/") and p != "docs/README.md" and p not in pages]
    assert not missing, f"docs pages without a single CPU-tested command: {missing}"


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.language == "bash"], ids=lambda b: b.name)
def test_commands_use_only_flags_and_config_keys_that_exist(block):
    problems = [p for argv in shell_commands(block) for p in command_problems(argv)]
    assert not problems, f"{block.name}: {problems}"


def test_static_check_catches_a_misspelt_flag_key_and_script_option():
    assert command_problems(["python", "-m", "stiv_jax.sample", "--workdir=x", "--stpes=2"]) == [
        "stiv_jax.sample defines no flag --stpes"]
    assert command_problems(["python", "-m", "stiv_jax.train", "--config=experiments/demo.py",
                             "--config.optim.learning_rate=1"]) == [
        "--config.optim.learning_rate=1: the config experiments/demo.py has no key optim.learning_rate"]
    assert command_problems(["launch/tpu_vm.sh", "train", "--accelerator=v5p-256", "--zones=x"]) == [
        "launch/tpu_vm.sh does not parse --zones"]
    assert command_problems(["python", "-m", "stiv_jax.sample", "--noema", "--steps=2"]) == []


def test_overrides_are_appended_to_training_commands_only():
    block = Block("x.md", 1, "bash", "cpu-test", "--config.total_steps=2",
                  "python -m stiv_jax.train --config=experiments/demo.py \\\n    --workdir=runs/a | tee log\n"
                  "python -m stiv_jax.launch.local --num_processes=2 -- --config=experiments/demo.py\n"
                  "python -m stiv_jax.launch.local --num_processes=2\n"
                  "python -m stiv_jax.launch.local --module=stiv_jax.launch.distributed\n"
                  "python -m stiv_jax.sample --workdir=runs/a")
    lines = with_overrides(block).splitlines()
    assert lines == [
        "python -m stiv_jax.train --config=experiments/demo.py --workdir=runs/a --config.total_steps=2 | tee log",
        "python -m stiv_jax.launch.local --num_processes=2 -- --config=experiments/demo.py --config.total_steps=2",
        "python -m stiv_jax.launch.local --num_processes=2 -- --config.total_steps=2",
        "python -m stiv_jax.launch.local --module=stiv_jax.launch.distributed",
        "python -m stiv_jax.sample --workdir=runs/a"]


# ----------------------------------------------------------------------------------------- running the blocks
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
        # Tiny models: compile time dominates, so skip XLA's CPU optimisation passes (about 40% less CPU time,
        # identical losses on the demo).
        "XLA_FLAGS": "--xla_force_host_platform_device_count=1 --xla_backend_optimization_level=0 "
                     "--xla_llvm_disable_expensive_passes=true",
        # The suite's persistent cache when tests/conftest.py set one (a re-run of the suite compiles nothing).
        "JAX_COMPILATION_CACHE_DIR": env.get("JAX_COMPILATION_CACHE_DIR") or str(root / ".jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": env.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5"),
        "PYTHONUNBUFFERED": "1",
    })
    return root, env


@pytest.mark.parametrize("block", CPU_BLOCKS, ids=lambda b: b.name)
def test_cpu_block_runs(block, sandbox):
    root, env = sandbox
    script = with_overrides(block)
    command = ["bash", "-euo", "pipefail", "-c", script] if block.language == "bash" else [sys.executable, "-c", script]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
    assert result.returncode == 0, (f"{block.name} failed (status {result.returncode})\n--- ran ---\n{script}\n"
                                    f"--- output tail ---\n{(result.stdout + result.stderr)[-4000:]}")
