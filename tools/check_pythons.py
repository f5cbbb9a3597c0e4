"""Run the run-time code on every other supported Python against outputs recorded on this one.

    python tools/check_pythons.py [--pythons 3.10 3.12 3.13] [--refs DIR] [--cache DIR] [--require-all]

This Python (the main one: torch, transformers, regex) records the references with tests/compat_reference.py
(unless --refs names a directory already recorded) and builds altclip-np's wheel once. Each other Python gets
a virtual environment CACHE/pyX.Y (default ~/.cache/altclip-np/pythons, or $ALTCLIP_NP_PYTHONS_CACHE) with the
run-time dependencies of pyproject.toml from PyPI, made again only when they change; the wheel is reinstalled
into it on every run and `compat_reference.py check` runs there: no torch, no transformers, no test packages.
Pythons are found under ~/.pyenv/versions or as pythonX.Y on PATH, and checked in parallel. Numba's cache is
CACHE/numba-pyX.Y and the installed files get an mtime derived from their content, so a kernel unchanged
since the last run is not compiled again (a cold run spends most of its time compiling the kernels).
Exit status 0 when every Python found passed; 1 on a failure; 2 when a Python is missing and --require-all.
"""
import argparse
import concurrent.futures
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKER = ROOT / "tests" / "compat_reference.py"
PYTHONS = ("3.10", "3.12", "3.13")
# not copied when the wheel is built from a copy of the repository
BUILD_IGNORE = (".git", "__pycache__", "*.nbi", "*.nbc", "build", "dist", "*.egg-info", ".pytest_cache")


def find_python(version):
    """Path of a working CPython `version` ("3.10"): the newest ~/.pyenv/versions/X.Y.*, else pythonX.Y on PATH
    (a pyenv shim there fails unless that version is selected, so each candidate is tried)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = sorted(pyenv.glob(f"{version}.*/bin/python{version}"),
                        key=lambda p: [int(x) for x in p.parts[-3].split(".") if x.isdigit()], reverse=True)
    candidates += [Path(p) for p in [shutil.which(f"python{version}")] if p]
    for python in candidates:
        probe = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return python
    return None


def runtime_requirements():
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]


def run(cmd, log, **kwargs):
    """Run `cmd`, appending the command and its output to the list `log`; RuntimeError when it fails."""
    proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          **kwargs)
    log.append(f"$ {' '.join(str(c) for c in cmd)}\n{proc.stdout}")
    if proc.returncode:
        raise RuntimeError(f"exit status {proc.returncode}")
    return proc.stdout


def build_wheel(out_dir):
    """altclip-np's wheel, built from a copy of the repository (so the worktree gets no build/ folder)."""
    src, log = Path(out_dir) / "src", []
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(*BUILD_IGNORE))
    try:
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", out_dir, src], log)
    except RuntimeError:
        raise RuntimeError("check_pythons: building the wheel failed:\n" + "\n".join(log)) from None
    return next(Path(out_dir).glob("*.whl"))


def stamp_by_content(package_dir):
    """Give each installed file an mtime derived from its bytes: Numba keys its cache on (mtime, size)."""
    for path in Path(package_dir).rglob("*.py"):
        digest = int.from_bytes(hashlib.sha256(path.read_bytes()).digest()[:4], "little")
        os.utime(path, (1e9 + digest, 1e9 + digest))


def prepare_venv(python, version, cache, wheel, log):
    """cache/pyX.Y with the run-time requirements (remade when they or the interpreter change) and the wheel.
    The path stays the same, so Numba's cache (keyed on the installed files' paths) survives a remake."""
    requirements = runtime_requirements()
    venv, marker = cache / f"py{version}", "\n".join([str(python), *requirements]) + "\n"
    exe = venv / "bin" / "python"
    if not (venv / "requirements.done").is_file() or (venv / "requirements.done").read_text() != marker:
        shutil.rmtree(venv, ignore_errors=True)
        run([python, "-m", "venv", venv], log)
        run([exe, "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements], log)
        (venv / "requirements.done").write_text(marker)
    run([exe, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps", "--force-reinstall",
         wheel], log)
    site = run([exe, "-c", "import altclip_np, os; print(os.path.dirname(altclip_np.__file__))"], log,
               cwd=venv).strip()
    stamp_by_content(site)
    return exe


def check_one(version, cache, wheel, refs):
    """(version, status, seconds, output): status "passed", "failed" or "missing"."""
    start, log = time.perf_counter(), []
    python = find_python(version)
    if python is None:
        return version, "missing", 0.0, f"no working python{version} under ~/.pyenv/versions or on PATH"
    with open(cache / f"py{version}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run (a second CI job, a developer) may use this venv now
        try:
            exe = prepare_venv(python, version, cache, wheel, log)
            env = dict(os.environ, NUMBA_CACHE_DIR=str(cache / f"numba-py{version}"))
            env.pop("PYTHONPATH", None)
            # from the cache directory, so `import altclip_np` finds the installed wheel, not the worktree
            run([exe, CHECKER, "check", refs], log, cwd=cache, env=env)
            status = "passed"
        except RuntimeError:
            status = "failed"
    return version, status, time.perf_counter() - start, "\n".join(log)


def default_cache():
    """$ALTCLIP_NP_PYTHONS_CACHE, else ~/.cache/altclip-np/pythons (kept between runs: CI reuses it)."""
    if os.environ.get("ALTCLIP_NP_PYTHONS_CACHE"):
        return Path(os.environ["ALTCLIP_NP_PYTHONS_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "altclip-np" / "pythons"


def check_all(versions, refs=None, cache=None, jobs=len(PYTHONS)):
    """[(version, status, seconds, output)] for each version, checked `jobs` at a time."""
    cache = Path(cache or default_cache())
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="altclip-np-pythons-") as tmp:
        if refs is None:
            refs, log = Path(tmp) / "refs", []
            try:
                run([sys.executable, CHECKER, "record", refs], log)
            except RuntimeError:
                raise RuntimeError("check_pythons: recording the references failed:\n" + "\n".join(log)) from None
        wheel = build_wheel(tmp)
        with concurrent.futures.ThreadPoolExecutor(max(1, jobs)) as pool:
            return list(pool.map(lambda v: check_one(v, cache, wheel, refs), versions))


def summary(version, status, seconds, output):
    """A Python's result for people: the checker's report when it ran, else every command's output."""
    head = f"== Python {version}: {status} ({seconds:.0f} s)"
    command, _, report = output[output.rfind("$ "):].partition("\n")
    if status == "missing" or "compat_reference.py check" not in command:
        report = output  # it did not get to the check: show every step
    return f"{head}\n{report.rstrip()}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pythons", nargs="+", default=list(PYTHONS), help="versions to check (default: %(default)s)")
    parser.add_argument("--refs", help="a directory compat_reference.py already recorded (default: record now)")
    parser.add_argument("--cache", type=Path, default=default_cache(),
                        help="where the venvs live (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=len(PYTHONS), help="Pythons checked at once (default: 3)")
    parser.add_argument("--require-all", action="store_true", help="fail when a Python is not installed")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        results = check_all(args.pythons, args.refs, args.cache, args.jobs)
    except RuntimeError as e:
        print(e)
        return 1
    for result in results:
        print(summary(*result))
    statuses = [status for _, status, _, _ in results]
    print(f"check_pythons: {statuses.count('passed')}/{len(results)} Pythons passed in "
          f"{time.perf_counter() - start:.0f} s")
    if "failed" in statuses:
        return 1
    return 2 if args.require_all and "missing" in statuses else 0


if __name__ == "__main__":
    sys.exit(main())
