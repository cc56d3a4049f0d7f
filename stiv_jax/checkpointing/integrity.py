"""Checkpoint integrity: a SHA-256 manifest of every file of a step, written before the step is committed and
checked before it is restored.

Orbax offers no checksum of its own (TensorStore's OCDBT detects some torn writes, not flipped bytes: damaged
data files restore as finite-looking garbage or NaN). ``write_manifest`` runs in orbax's post-finalization
callback, after every item is written and before the ``<step>.orbax-checkpoint-tmp*`` directory is renamed to
``<step>``, so a committed step carries its manifest (``integrity.json``) from the moment it exists.

``verify(step_dir)`` returns a one-line problem naming the first file that is missing, truncated or differs,
``MISSING`` for a step written without a manifest (older code), or None when every listed file matches.
Process 0 hashes every file of the step (all hosts have written theirs when orbax finalizes; the checkpoint
directory is shared storage), so on a pod the manifest costs one read of the checkpoint by one host, in the
background. Orbax's step metadata and commit markers (``UNHASHED``), rewritten after the callback, are left out.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os

MANIFEST = "integrity.json"
MISSING = "missing"          # verify(): the step has no manifest (written before manifests existed)
_CHUNK = 8 * 1024 * 1024
# Rewritten by orbax after the callback (commit timestamps), and holding no state: not hashed.
UNHASHED = ("_CHECKPOINT_METADATA", "commit_success.txt")


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(step_dir: str) -> str:
    """Hashes every file of ``step_dir`` into its manifest (atomic write); returns the manifest's path."""
    files = {}
    for root, _, names in os.walk(step_dir):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if name.startswith("integrity.") or name in UNHASHED:
                continue
            files[rel] = {"bytes": os.path.getsize(path), "sha256": file_sha256(path)}
    out = os.path.join(step_dir, MANIFEST)
    with open(out + ".tmp", "w") as f:
        json.dump({"algorithm": "sha256", "files": dict(sorted(files.items()))}, f, indent=0)
    os.replace(out + ".tmp", out)
    return out


def write_manifest_for_pending(checkpoints: str, step: int) -> None:
    """``write_manifest`` on the directory orbax is about to commit as ``step`` (its temporary name), or on the
    committed one when there is no temporary directory (synchronous saves)."""
    pending = sorted(glob.glob(os.path.join(checkpoints, f"{step}.orbax-checkpoint-tmp*")))
    write_manifest(pending[-1] if pending else os.path.join(checkpoints, str(step)))


def verify(step_dir: str) -> str | None:
    """None if every file listed in the step's manifest is present with its size and hash; ``MISSING`` if the
    step has no manifest; else a one-line description naming the first bad file."""
    manifest = os.path.join(step_dir, MANIFEST)
    if not os.path.exists(manifest):
        return MISSING
    try:
        with open(manifest) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError) as err:
        return f"{manifest}: unreadable integrity manifest ({err})"
    for rel, expected in files.items():
        path = os.path.join(step_dir, rel)
        if not os.path.isfile(path):
            return f"{path}: file missing"
        size = os.path.getsize(path)
        if size != expected["bytes"]:
            return f"{path}: {size} bytes, {expected['bytes']} were written (truncated or overwritten)"
        if file_sha256(path) != expected["sha256"]:
            return f"{path}: SHA-256 differs from the one written at save (damaged bytes)"
    return None
