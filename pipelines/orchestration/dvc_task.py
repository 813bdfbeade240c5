"""A training task's DVC commands in one Python process: `python -m pipelines.orchestration.dvc_task "dvc repro ..." "dvc push ..."`.

Each argument is one `dvc ...` command line (as `orchestration.dvc_commands` writes them), run in
order through DVC's own CLI entry point until one fails; the exit code is that command's. One
process instead of one per command saves DVC's import and start-up cost (about 0.3-0.5 s a command
on 2 cores) in every task. Imports nothing but DVC.
"""

from __future__ import annotations

import shlex
import sys


def run(commands: list[str]) -> int:
    from dvc.cli import main as dvc_main

    for command in commands:
        program, *args = shlex.split(command)
        if program != "dvc":
            print(f"error: not a dvc command: {command}", file=sys.stderr)
            return 64  # EX_USAGE
        sys.stdout.flush()
        code = dvc_main(args)
        if code:
            return code
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
