"""Test helpers: checkpoint directories as they exist in the wild, built from `save_pretrained` output."""
import hashlib
import json
import os
import shutil


def as_hub_cache(src_dir, cache_root, *, repo="org/name", subfolder="", revision="0123456789abcdef"):
    """Moves `src_dir`'s files into a Hugging Face hub cache layout (as `huggingface-cli download` leaves it).

    `cache_root/models--ORG--NAME/{blobs/<sha256>, snapshots/<revision>/[subfolder/]<file> -> ../../blobs/<sha256>,
    refs/main}`. Returns the repository directory `models--ORG--NAME`.
    """
    repo_dir = os.path.join(cache_root, "models--" + repo.replace("/", "--"))
    snapshot = os.path.join(repo_dir, "snapshots", revision, subfolder)
    os.makedirs(os.path.join(repo_dir, "blobs"), exist_ok=True)
    os.makedirs(snapshot, exist_ok=True)
    os.makedirs(os.path.join(repo_dir, "refs"), exist_ok=True)
    for name in sorted(os.listdir(src_dir)):
        with open(os.path.join(src_dir, name), "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        blob = os.path.join(repo_dir, "blobs", digest)
        shutil.move(os.path.join(src_dir, name), blob)
        os.symlink(os.path.relpath(blob, snapshot), os.path.join(snapshot, name))
    with open(os.path.join(repo_dir, "refs", "main"), "w") as f:
        f.write(revision)
    return repo_dir


def edit_config(directory, *, drop=(), **fields):
    """Rewrites `directory/config.json` without the `drop` fields and with `fields` set."""
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        raw = json.load(f)
    for name in drop:
        raw.pop(name, None)
    raw.update(fields)
    with open(path, "w") as f:
        json.dump(raw, f)
    return raw
