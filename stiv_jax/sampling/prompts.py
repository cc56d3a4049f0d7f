"""Prompt files for batch sampling: plain text (one prompt a line) or VBench's ``VBench_full_info.json``.

VBench (the ``vbench`` package) evaluates a folder of videos named ``{prompt}-{index}.mp4`` with index 0-4 per
prompt of its full-info JSON (a list of objects with ``prompt_en`` and ``dimension``).
"""
from __future__ import annotations

import dataclasses
import json
import os


@dataclasses.dataclass(frozen=True)
class PromptEntry:
    prompt: str
    dimensions: tuple[str, ...] = ()


def read_prompt_file(path: str, *, dimension: str | None = None) -> list[PromptEntry]:
    """Prompts of ``path`` in file order, duplicates dropped.

    Args:
      path: a ``.json`` file in the VBench full-info format, or a text file with one prompt a line (blank lines
        and lines starting with ``#`` are skipped).
      dimension: keep only VBench prompts of this dimension (e.g. ``subject_consistency``).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"--prompt_file={path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.endswith(".json"):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--prompt_file={path!r} is not valid JSON: {e}") from e
        if not isinstance(items, list):
            raise ValueError(f"--prompt_file={path!r}: expected a JSON list of {{'prompt_en', 'dimension'}}")
        entries = []
        for i, item in enumerate(items):
            if not isinstance(item, dict) or "prompt_en" not in item:
                raise ValueError(f"--prompt_file={path!r}: entry {i} has no 'prompt_en'")
            entries.append(PromptEntry(item["prompt_en"], tuple(item.get("dimension", ()))))
    else:
        entries = [PromptEntry(line.strip()) for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    if dimension is not None:
        entries = [e for e in entries if dimension in e.dimensions]
    seen, unique = set(), []
    for e in entries:
        if e.prompt not in seen:
            seen.add(e.prompt)
            unique.append(e)
    if not unique:
        raise ValueError(f"--prompt_file={path!r} holds no prompts" + (f" of dimension {dimension!r}"
                                                                      if dimension else ""))
    return unique


def vbench_filename(prompt: str, index: int, ext: str = ".mp4") -> str:
    """VBench's expected name ``{prompt}-{index}.mp4`` ("/" would make a directory, so it becomes " ")."""
    return f"{prompt.replace(os.sep, ' ')}-{index}{ext}"
