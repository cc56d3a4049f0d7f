"""Where a train step's device time goes: a ``jax.profiler`` trace split into attention, FFN, norms, optimizer,
collectives and the rest, so the next optimisation is chosen from data.

A trace written with ``jax.profiler.trace(dir, create_perfetto_trace=True)`` holds one event per executed HLO
instruction (GPU kernels and CPU thunks carry ``args.hlo_op``). The category of an instruction comes from the
compiled module's text: its opcode (collectives) or the ``op_name`` metadata, which carries the Flax module path
(``spatial_attn``, ``ffn`` ...) and the transformation stack (no ``jvp``/``transpose``: the optimizer and EMA).
"""
from __future__ import annotations

import glob
import gzip
import json
import os
import re

CATEGORIES = ("attention", "ffn", "norms", "optimizer", "collectives", "other")
_RULES = (  # (category, pattern over op_name), first match wins
    ("attention", re.compile(r"(spatial_attn|temporal_attn|cross_attn|full_attn|attention|fmha|splash)")),
    ("ffn", re.compile(r"(/ffn/|ffn_hidden|/mlp/)")),
    ("norms", re.compile(r"(norm|rsqrt)")),
)
_COLLECTIVE = re.compile(r"^(all-gather|all-reduce|reduce-scatter|all-to-all|collective-permute)")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(?:\([^=]*?\)|\S+)\s+([\w\-]+)\(")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def op_categories(hlo_text: str) -> dict[str, str]:
    """Instruction name -> category, for every instruction of an optimized HLO module."""
    out = {}
    for line in hlo_text.splitlines():
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, opcode = match.groups()
        op_name = _OP_NAME.search(line)
        op_name = op_name.group(1) if op_name else ""
        out[name] = categorize(opcode, op_name)
    return out


def categorize(opcode: str, op_name: str) -> str:
    if _COLLECTIVE.match(opcode) or "nccl" in op_name.lower():
        return "collectives"
    for category, pattern in _RULES:
        if pattern.search(op_name):
            return category
    if op_name and "jvp(" not in op_name and "transpose(" not in op_name:
        return "optimizer"          # outside the differentiated model: optimizer update, EMA, clipping
    return "other"


def trace_events(trace_dir: str) -> list[dict]:
    """The complete ('X') events of the newest perfetto trace under ``trace_dir``."""
    files = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True),
                   key=os.path.getmtime)
    if not files:
        raise FileNotFoundError(f"no *.trace.json.gz under {trace_dir}: trace with "
                                f"jax.profiler.trace(dir, create_perfetto_trace=True)")
    with gzip.open(files[-1]) as f:
        data = json.load(f)
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X"]


def breakdown(events: list[dict], categories: dict[str, str], *, module: str = "") -> dict[str, float]:
    """Seconds per category of the events that name an HLO instruction (``args.hlo_op``) of ``module``.

    Events of other modules (e.g. the data pipeline's jits) are left out when ``module`` is given (a substring
    of ``args.hlo_module``).
    """
    out = dict.fromkeys(CATEGORIES, 0.0)
    for event in events:
        args = event.get("args", {}) or {}
        op = args.get("hlo_op")
        if not op or (module and module not in str(args.get("hlo_module", ""))):
            continue
        category = categories.get(op)
        if category is None:
            category = "collectives" if _COLLECTIVE.match(op) or "nccl" in event.get("name", "").lower() \
                else "other"
        out[category] += float(event.get("dur", 0.0)) * 1e-6     # trace durations are microseconds
    return out


def format_breakdown(seconds: dict[str, float]) -> str:
    total = sum(seconds.values()) or 1.0
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in seconds.items() if v) + \
        f" (of {total * 1e3:.1f} ms traced device time)"
