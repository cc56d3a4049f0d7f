"""Launch helpers: XLA/libtpu flag sets, TPU host counts, distributed init, the local multi-process launcher.

``xla_flags`` and ``topology`` use only the standard library (launch scripts run them on workstations).
"""
