"""Damaged data is named: a truncated shard or a record failing its checksum names the shard file (refused, or
skipped and counted with config.data.on_damaged_shard='skip'); a shard build that cut no clip fails and leaves
no output directory."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from array_record.python import array_record_module

from stiv_jax.data import build_shards as build_lib
from stiv_jax.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write_shards(directory, count=3, records=6):
    os.makedirs(directory, exist_ok=True)
    paths = []
    for shard in range(count):
        path = os.path.join(directory, f"clips-{shard:05d}-of-{count:05d}.array_record")
        writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
        rng = np.random.default_rng(shard)
        for _ in range(records):
            writer.write(rng.bytes(3000))     # incompressible: one ~3 kB chunk per record
        writer.close()
        paths.append(path)
    return paths


def test_a_truncated_shard_is_named_or_skipped_and_counted(tmp_path, capsys):
    paths = _write_shards(str(tmp_path / "shards"))
    os.truncate(paths[1], os.path.getsize(paths[1]) // 2)
    with pytest.raises(pipeline.DamagedShardError, match=rf"{paths[1]} cannot be opened.*1 of 3 shards"):
        pipeline.open_source(str(tmp_path / "shards"))
    source = pipeline.open_source(str(tmp_path / "shards"), on_damaged="skip")
    assert len(source) == 12 and source.paths == [paths[0], paths[2]]
    assert f"skipping 1 of 3 damaged shards of config.data.shards (config.data.on_damaged_shard='skip'): {paths[1]}" \
        in capsys.readouterr().out
    with pytest.raises(ValueError, match="config.data.on_damaged_shard='sometimes'"):
        pipeline.open_source(str(tmp_path / "shards"), on_damaged="sometimes")


def test_a_record_failing_its_checksum_names_the_shard_and_record(tmp_path):
    paths = _write_shards(str(tmp_path / "shards"))
    data = bytearray(open(paths[2], "rb").read())
    data[6500:6516] = b"\0" * 16        # inside the third record's chunk (the file is padded to 128 kB)
    open(paths[2], "wb").write(bytes(data))
    source = pipeline.open_source(str(tmp_path / "shards"))
    bad = []
    for index in range(len(source)):
        try:
            source[index]
        except pipeline.DamagedShardError as err:
            bad.append(str(err))
    assert bad and all(msg.startswith(f"{paths[2]}: record ") and "hash mismatch" in msg for msg in bad), bad
    skipping = pipeline.open_source(str(tmp_path / "shards"), on_damaged="skip")
    assert sum(skipping[i] == b"" for i in range(len(skipping))) == len(bad)   # read as unreadable: skipped


def _captions(path, lines):
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return str(path)


def test_a_build_that_cut_no_clip_fails_and_leaves_no_output_directory(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"not a video" * 100)
    captions = _captions(tmp_path / "captions.jsonl", [json.dumps({"video": "broken.mp4", "caption": "x"})])
    out = tmp_path / "out"
    with pytest.raises(build_lib.NoClipsError, match=r"no clip was cut from the 1 videos.*broken.mp4"):
        build_lib.build_shards(videos=str(videos), captions=captions, out=str(out), num_workers=1, progress=False)
    assert not out.exists()
    bad = _captions(tmp_path / "bad.jsonl", [json.dumps({"video": "broken.mp4", "caption": "x"}), "{not json"])
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object"):
        build_lib.build_shards(videos=str(videos), captions=bad, out=str(out), num_workers=1, progress=False)
    assert not out.exists()
    # The CLI: status 1 and the error once, in one line.
    env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "stiv_jax.data.build_shards", f"--videos={videos}",
                           f"--captions={captions}", f"--out={out}", "--num_workers=1"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith("error: NoClipsError: no clip was cut"), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not out.exists()
