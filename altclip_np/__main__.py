"""The `altclip-np` command's entry point (also `python -m altclip_np`).

It tunes the process (altclip_np.runtime.tune_process) before anything loads NumPy, whose OpenBLAS reads its
thread timeout only then; the command itself is altclip_np.cli.
"""
import sys
from pathlib import Path


def main(argv=None):
    # `python -m altclip_np` run in a checkout puts its root on sys.path, where the kernels/ folder (installed as
    # altclip_np.kernels) would shadow Hugging Face's `kernels` package, which transformers imports (`parity`
    # failed: "cannot import name 'CUDAProperties' from 'kernels'"). The command owns its process.
    root = Path(__file__).resolve().parent.parent
    if (root / "kernels" / "_tile.py").is_file():
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    from . import runtime
    runtime.tune_process()
    from .cli import main as cli_main
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
