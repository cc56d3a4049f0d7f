"""jax.distributed initialisation: launch detection, and clear errors for missing hosts (real processes)."""
import os
import subprocess
import sys

import pytest

from stiv_jax.launch import distributed, local

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_plain_run_is_single_process():
    env = distributed.detect_launch_environment({}, on_tpu=False)
    assert env.kind == "single" and not env.multi_process


def test_local_launcher_variables_are_read():
    env = distributed.detect_launch_environment(
        {"STIV_COORDINATOR_ADDRESS": "localhost:1234", "STIV_NUM_PROCESSES": "2", "STIV_PROCESS_ID": "1",
         "STIV_EXPECTED_PROCESSES": "2"}, on_tpu=False)
    assert (env.kind, env.coordinator_address, env.num_processes, env.process_id, env.expected_processes) == (
        "local", "localhost:1234", 2, 1, 2)


def test_half_set_local_variables_name_the_missing_one():
    with pytest.raises(distributed.MultiHostLaunchError, match="STIV_PROCESS_ID is not"):
        distributed.detect_launch_environment(
            {"STIV_COORDINATOR_ADDRESS": "h:1", "STIV_NUM_PROCESSES": "2"}, on_tpu=False)


def test_slurm_multi_task_job_is_multi_process_but_single_task_is_not():
    env = distributed.detect_launch_environment(
        {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_STEP_NODELIST": "gpu[01-04]"},
        on_tpu=False)
    assert (env.kind, env.num_processes, env.process_id) == ("slurm", 4, 3)
    assert "gpu[01-04]" in env.coordinator_address
    assert distributed.detect_launch_environment({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, on_tpu=False).kind \
        == "single"


def test_tpu_pod_markers_are_multi_process():
    gke = distributed.detect_launch_environment(
        {"TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3", "TPU_WORKER_ID": "2", "MEGASCALE_NUM_SLICES": "2",
         "MEGASCALE_COORDINATOR_ADDRESS": "h0:8080"}, on_tpu=False)
    assert (gke.kind, gke.num_processes, gke.process_id, gke.coordinator_address) == ("tpu", 8, 2, "h0:8080")
    assert distributed.detect_launch_environment({}, on_tpu=True).kind == "tpu"


def test_expected_processes_alone_asks_jax_to_auto_detect():
    assert distributed.detect_launch_environment({"STIV_EXPECTED_PROCESSES": "32"}, on_tpu=False).kind == "auto"
    assert distributed.detect_launch_environment({"STIV_EXPECTED_PROCESSES": "1"}, on_tpu=False).kind == "single"


def test_process_count_mismatch_names_both_numbers():
    with pytest.raises(distributed.MultiHostLaunchError, match=r"expects 32 JAX processes .* is 31: 1 host\(s\) "
                                                               r"are missing"):
        distributed.check_process_count(32, actual=31)
    with pytest.raises(distributed.MultiHostLaunchError, match="2 more host"):
        distributed.check_process_count(2, actual=4)
    distributed.check_process_count(None, actual=3)
    distributed.check_process_count(4, actual=4)


def test_two_local_processes_join_and_all_gather(capfd):
    status = local.launch(2, [], module="stiv_jax.launch.distributed", devices_per_process=2)
    out = capfd.readouterr().out
    assert status == 0, out
    for i in range(2):
        assert f"[p{i}] launch=local process {i} of 2: 2 local / 4 global cpu devices; " \
               "all-gather of process ids = [0, 1]" in out


def test_a_missing_host_times_out_with_a_message_naming_the_coordinator():
    # Only process 0 of an announced 2-process job is started: the "ran it on one host by mistake" case.
    env = local.process_environments(2, port=local.free_port(), devices_per_process=1, init_timeout_s=2)[0]
    result = subprocess.run([sys.executable, "-m", "stiv_jax.launch.distributed"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == distributed.EXIT_INIT_TIMEOUT, result.stderr[-2000:]
    coordinator = env["STIV_COORDINATOR_ADDRESS"]
    assert (f"did not finish within 2 s: process 0 waited for 2 processes at coordinator {coordinator}"
            in result.stderr)
    assert "started on one host only" in result.stderr


def test_expected_processes_without_a_launch_environment_is_refused():
    # A pod job's command run by hand on one machine: STIV_EXPECTED_PROCESSES says 2, nothing says who the others are.
    env = dict(os.environ, JAX_PLATFORMS="cpu", STIV_EXPECTED_PROCESSES="2", STIV_INIT_TIMEOUT_S="5")
    for name in ("STIV_COORDINATOR_ADDRESS", "STIV_NUM_PROCESSES", "STIV_PROCESS_ID", "SLURM_JOB_ID"):
        env.pop(name, None)
    result = subprocess.run([sys.executable, "-m", "stiv_jax.launch.distributed"], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-2000:]
    assert "STIV_EXPECTED_PROCESSES=2 asks for a multi-process job, but no launch environment was found" \
        in result.stderr
    assert "python -m stiv_jax.launch.local" in result.stderr


def test_fewer_processes_than_the_launch_expects_fail_naming_both_numbers():
    # Two processes join each other, but the launch announced three hosts: one host is missing from the job.
    envs = local.process_environments(2, port=local.free_port(), devices_per_process=1, init_timeout_s=60)
    procs = []
    for env in envs:
        env[distributed.ENV_EXPECTED] = "3"
        procs.append(subprocess.Popen([sys.executable, "-m", "stiv_jax.launch.distributed"], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 3, err[-2000:]
        assert ("this job expects 3 JAX processes (STIV_EXPECTED_PROCESSES=3) but jax.process_count() is 2: "
                "1 host(s) are missing") in err
