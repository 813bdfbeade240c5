"""The real server the HTTP tests start: pipelines/bench/served.py (the fault benchmark starts the same one)."""

from pipelines.bench.served import KEYS, ROOT as REPO, Server  # noqa: F401
