"""The `altclip-np` command's entry point (also `python -m altclip_np`).

It tunes the process (altclip_np.runtime.tune_process) before anything loads NumPy, whose OpenBLAS reads its
thread timeout only then; the command itself is altclip_np.cli.
"""
import sys


def main(argv=None):
    from . import runtime
    runtime.tune_process()
    from .cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
