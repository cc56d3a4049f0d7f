"""A launcher child for tests/launch/test_local_launcher.py: process 1 kills itself with SIGKILL, the others wait."""
import os
import signal
import time

if os.environ.get("STIV_PROCESS_ID") == "1":
    os.kill(os.getpid(), signal.SIGKILL)
time.sleep(120)
