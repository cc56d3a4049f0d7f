"""bench/learning.py's --set KEY=VALUE: overrides land in the config; an unknown key is an error naming it."""
import os
import sys

import pytest

from conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
import learning as learning_bench  # noqa: E402  (bench/learning.py)


def test_set_overrides_keys_of_the_learning_config_and_names_unknown_ones():
    args = learning_bench.parse_args(["--set", "data.batch_size=16", "--set", "model.width=192",
                                      "--set", "model.attention_layout=factorized", "--data=/data"])
    config = learning_bench.run_config(args)
    assert config.data.batch_size == 16 and config.model.width == 192
    assert config.model.attention_layout == "factorized"
    assert config.data.shard_weights[0][0].startswith("/data/")
    for bad, named in (("data.batchsize=3", "data.batchsize"), ("modle.width=3", "modle"), ("lr", "KEY=VALUE")):
        with pytest.raises(SystemExit, match=named):
            learning_bench.run_config(learning_bench.parse_args(["--set", bad]))
