"""The embedding index: concurrent writers, kills at random and chosen points, a full disk, changed images, the
old single-file format, malformed files (also fuzzed), Dask, and approximate search.

Every index is compared row by row with a single-process embed of the same images (`reference`). Rows written
in batches of another composition differ by float32 rounding only: max abs difference observed 0 (the tiny
model gives bit-identical rows here); 1e-6 is allowed.

The concurrency and kill tests run 3 trials each; for the issue's 20, run
    ALTCLIP_NP_STRESS_TRIALS=20 python -m pytest -q tests/test_index.py -k "concurrent or random"
"""
import errno
import json
import os
import random
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from altclip_np import ann, cli, index
from conftest import run

TRIALS = int(os.environ.get("ALTCLIP_NP_STRESS_TRIALS", "3"))
ATOL = 1e-6
BUSY = "being written by another run"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 small readable images of different sizes, and a broken one."""
    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (20 + i, 31, 3), dtype=np.uint8)).save(root / f"img{i:02d}.png")
    (root / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def readable(root):
    return sorted(str(p) for p in root.glob("img*.png"))


@pytest.fixture(scope="module")
def reference(ckpt, images, tmp_path_factory):
    """{source: row} of a single-process, uninterrupted embed (in this process, through the library API)."""
    out = tmp_path_factory.mktemp("reference") / "ref"
    index.embed(readable(images), out, model=str(ckpt), batch_size=2, shard_rows=2, progress=False)
    return dict(zip(*contents(out)))


def contents(out):  # -> (sources, rows [n, d]) of the live rows, in index order
    found = index.open_index(out)
    sources, rows = [], []
    for i in range(len(found.shards)):
        dead = set(found.dead.get(i, []))
        for row, (meta, vector) in enumerate(zip(found.metadata(i), found.rows(i))):
            if row not in dead:
                sources.append(meta["source"])
                rows.append(vector)
    return sources, np.array(rows).reshape(len(rows), found.dim)


def check_rows(out, reference, expected_sources):
    """Each source once, exactly the expected ones, each row its reference row; -> max abs difference."""
    sources, rows = contents(out)
    assert len(sources) == len(set(sources)), "a source is in the index twice"
    assert sorted(sources) == sorted(expected_sources)
    diff = max((float(np.abs(row - reference[s]).max()) for s, row in zip(sources, rows)), default=0.0)
    assert diff <= ATOL, diff
    return diff


def no_leftovers(out):
    assert not list(Path(out).rglob("*.tmp"))
    listed = {s["name"] for s in index.read_manifest(out)["shards"]}
    assert {p.stem for p in (Path(out) / "shards").iterdir()} == listed


def embed_args(out, sources, ckpt, *extra):
    return ["embed", *sources, "--out", out, "--model", ckpt, "--batch-size", 2, "--shard-size", 2, *extra]


def popen(args):
    return subprocess.Popen([sys.executable, "-m", "altclip_np.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


# ---- concurrency, kills, full disk ------------------------------------------------------------------------

@pytest.mark.parametrize("trial", range(TRIALS))
def test_concurrent_writers(trial, ckpt, images, reference, tmp_path):
    """4 writers at once on overlapping image sets: 2 wait for the lock, 2 fail at once if it is taken."""
    paths, out = readable(images), tmp_path / "shared"
    sets = [paths[(6 * i) % 24:][:12] + (paths[:max(0, 6 * i + 12 - 24)]) for i in range(4)]
    procs = [popen(embed_args(out, sources, ckpt, *(["--wait"] if i % 2 == 0 else [])))
             for i, sources in enumerate(sets)]
    added = set()
    for i, proc in enumerate(procs):
        stdout, stderr = proc.communicate(timeout=120)
        if proc.returncode == 0:
            added |= set(sets[i])
        else:  # fail-at-once writers only, with one clear line
            assert i % 2 == 1 and proc.returncode == 1, stderr
            assert stderr.strip().splitlines()[-1].startswith(f"altclip-np: error: {out} is {BUSY}"), stderr
    assert added >= set(sets[0]) | set(sets[2])  # the waiting writers always get their turn
    check_rows(out, reference, added)  # every run that succeeded added its rows; nothing else is there
    no_leftovers(out)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_kill_at_random_points_then_rerun(trial, ckpt, images, reference, tmp_path):
    """Every third trial kills at a random time from the start (mostly during start-up, which takes 1-2 s);
    the others at a random time after the first shard is recorded, while shards are being written."""
    out, rng = tmp_path / "killed", random.Random(trial)
    proc = popen(embed_args(out, [images], ckpt))
    if trial % 3 == 0:
        time.sleep(rng.uniform(0.3, 2.0))
    else:
        while not (out / "manifest.json").exists() and proc.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.4))  # the other 11 shards take ~0.3-0.5 s
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if out.exists() and index.read_manifest(out):  # what a kill leaves is a valid, smaller index
        check_rows(out, reference, contents(out)[0])
    result = run(*embed_args(out, [images], ckpt))
    assert "rows (" in result.stdout
    check_rows(out, reference, readable(images))
    no_leftovers(out)


CRASH = textwrap.dedent("""
    import os, sys
    from altclip_np import cli, index
    when, n = sys.argv[1], int(sys.argv[2])
    real, calls = index.durable_replace, [0]
    def dying(tmp, path):  # like a kill -9 before or after the n-th rename into place
        calls[0] += 1
        if calls[0] == n and when == "before":
            os._exit(99)
        real(tmp, path)
        if calls[0] == n and when == "after":
            os._exit(99)
    index.durable_replace = dying
    sys.exit(cli.main(sys.argv[3:]))
""")


@pytest.mark.parametrize("point", [("before", 1), ("after", 1), ("after", 2), ("before", 3), ("after", 3),
                                   ("after", 5)])
def test_crash_before_or_after_each_kind_of_rename(point, ckpt, images, reference, tmp_path):
    """Renames 1-3 are the first shard's .npy, .jsonl and the manifest; 5 is the second shard's .jsonl."""
    out, sources = tmp_path / "crashed", readable(images)[:5]
    args = [str(a) for a in embed_args(out, sources, ckpt)]
    crashed = subprocess.run([sys.executable, "-c", CRASH, *map(str, point), *args], capture_output=True,
                             text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert crashed.returncode == 99, crashed.stderr
    committed = 2 if point in {("after", 3), ("after", 5)} else 0  # the manifest lists shard 1
    if committed:
        check_rows(out, reference, sources[:committed])
    else:
        assert index.open_index(out) is None
    summary = index.embed(sources, out, model=str(ckpt), batch_size=2, shard_rows=2, progress=False)
    assert summary["new"] == 5 - committed and summary["already"] == committed
    check_rows(out, reference, sources)
    no_leftovers(out)


def test_second_writer_fails_at_once_or_waits(ckpt, images, tmp_path):
    out = tmp_path / "locked"
    out.mkdir()
    with index.locked(out):
        result = run(*embed_args(out, readable(images)[:2], ckpt), expect=1)
        assert result.stderr == f"altclip-np: error: {out} is {BUSY} (pid {os.getpid()}); rerun when it has " \
                                "finished, or pass --wait to wait for it\n"
        waiting = popen(embed_args(out, readable(images)[:2], ckpt, "--wait"))
        first = waiting.stderr.readline()  # blocks until it has found the lock taken
        assert first == f"altclip-np: warning: waiting for another run (pid {os.getpid()}) to finish writing {out}\n"
        time.sleep(0.5)
        assert waiting.poll() is None  # still waiting
    stdout, stderr = waiting.communicate(timeout=60)
    assert waiting.returncode == 0 and "2 new" in stdout


def fill_disk(directory, leave):
    """Fill the file system of `directory` until `leave` bytes are free; -> the filler file."""
    filler = directory / "filler"
    with open(filler, "wb") as f:
        try:
            while os.statvfs(directory).f_bavail * os.statvfs(directory).f_frsize > leave:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
    return filler


def test_full_disk_gives_a_clear_error_and_keeps_the_index(ckpt, images, reference, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", disk],
                                                   capture_output=True).returncode == 0
    if not mounted:
        pytest.skip("needs root to mount a small tmpfs (test_enospc_simulated covers the same without it)")
    try:
        out, sources = disk / "index", readable(images)
        run(*embed_args(out, sources[:4], ckpt))
        before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != ".lock"}
        filler = fill_disk(disk, leave=6 * 4096)  # room for a shard or two, not 10 more
        result = run(*embed_args(out, sources, ckpt), expect=1)
        assert result.stderr.strip().splitlines()[-1].startswith(f"altclip-np: error: cannot write {out}: ")
        assert "No space left on device" in result.stderr and "Traceback" not in result.stderr
        done = contents(out)[0]
        assert set(done) >= set(sources[:4]) and len(done) < len(sources)
        check_rows(out, reference, done)  # shards finished before the disk filled are kept, and valid
        for path, data in before.items():
            if path.name != "manifest.json":
                assert path.read_bytes() == data  # nothing old rewritten
        filler.unlink()
        run(*embed_args(out, sources, ckpt))  # after making room the same command finishes the job
        check_rows(out, reference, sources)
        no_leftovers(out)
    finally:
        subprocess.run(["umount", disk], check=True)


def test_enospc_simulated(ckpt, images, reference, tmp_path, monkeypatch, capsys):
    """The same as above without root: the 4th file write fails as on a full disk."""
    out, sources = tmp_path / "index", readable(images)
    real, calls = index.write_file, [0]

    def full(path, write):
        calls[0] += 1
        if calls[0] == 4:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, write)

    monkeypatch.setattr(index, "write_file", full)
    assert cli.main([str(a) for a in embed_args(out, sources, ckpt)]) == 1
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"altclip-np: error: cannot write {out}: [Errno 28]")
    check_rows(out, reference, sources[:2])  # the first shard (3 writes) was recorded; the second was not
    monkeypatch.undo()
    index.embed(sources, out, progress=False, batch_size=2, shard_rows=2)
    check_rows(out, reference, sources)
    no_leftovers(out)


# ---- format: appending, changed images, the old single-file index ------------------------------------------

def test_append_writes_only_new_shards(ckpt, images, reference, tmp_path):
    out, sources = tmp_path / "grow", readable(images)
    index.embed(sources[:20], out, model=str(ckpt), batch_size=2, shard_rows=8, progress=False)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "shards").iterdir()}
    index.embed(sources, out, batch_size=2, shard_rows=8, progress=False)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "shards").iterdir()}
    assert all(after[p] == before[p] for p in before)  # old shards untouched
    new = [p for p in after if p not in before]
    assert sorted(p.suffix for p in new) == [".jsonl", ".npy"]  # one new shard holding the 4 new rows
    assert np.load(next(p for p in new if p.suffix == ".npy")).shape == (4, 16)
    check_rows(out, reference, sources)


def test_changed_image_is_embedded_again(ckpt, ours, images, tmp_path):
    from altclip_np.features import image_features, load_pixels
    out, sources = tmp_path / "changes", [str(tmp_path / f"{i}.png") for i in range(3)]
    for i, path in enumerate(sources):
        Image.fromarray(np.full((30, 30, 3), 60 * i, np.uint8)).save(path)
    index.embed(sources, out, model=str(ckpt), progress=False)
    Image.fromarray(np.full((40, 30, 3), 200, np.uint8)).save(sources[1])  # new size and mtime
    summary = index.embed(sources, out, progress=False)
    assert (summary["new"], summary["already"], summary["rows"]) == (1, 2, 3)
    found = index.open_index(out)
    assert found.shards[-1]["replaces"] == [[found.shards[0]["name"], 1]]
    model, processor = ours
    expected = image_features(model, load_pixels(processor, sources[1])[None])[0]
    got = dict(zip(*contents(out)))
    assert sorted(got) == sorted(sources)
    np.testing.assert_allclose(got[sources[1]], expected, atol=ATOL)  # observed max diff 0
    hits = ann.search(found, expected, 10, exact=True)  # the replaced row is never a hit
    assert sorted(h["source"] for h in hits) == sorted(sources) and hits[0]["source"] == sources[1]


def test_old_single_file_index_searches_and_converts(ckpt, images, reference, tmp_path):
    old, sources = tmp_path / "old.npy", readable(images)[:6]
    np.save(old, np.stack([reference[s] for s in sources] + [np.zeros(16, np.float32)]))  # + a torn extra row
    side = {"format": 1, "model": str(Path(ckpt).resolve()), "kind": "image", "dim": 16, "sources": sources}
    Path(f"{old}.json").write_text(json.dumps(side), encoding="utf-8")
    hits = json.loads(run("search", old, "a photo", "--json").stdout)
    assert sorted(h["source"] for h in hits) == sorted(sources)
    assert "index convert" in run("embed", images, "--out", old, expect=1).stderr
    assert "6 rows" in run("index", "convert", old, tmp_path / "new").stdout
    run("embed", images, "--out", tmp_path / "new", "--batch-size", 2, "--shard-size", 2)
    check_rows(tmp_path / "new", reference, readable(images))
    assert json.loads(run("search", tmp_path / "new", "a photo", "--json", "--top-k", 3).stdout)[0]["source"]


# ---- malformed files ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_index(ckpt, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "index"
    index.embed(readable(images)[:5], out, model=str(ckpt), batch_size=2, shard_rows=2, progress=False)
    return out


def read_everything(path):
    """Open an index and read every row and line, as search and embed do; -> number of live rows."""
    found = index.open_index(path)
    if found is None:
        return 0
    for i in range(len(found.shards)):
        np.asarray(found.rows(i)).sum()
        found.metadata(i)
    found.live()
    ann.search(found, np.ones(found.dim, np.float32), 3, exact=True)
    ann.load(found)  # the approximate index's ann.json and file, when there are any
    return len(found)


def manifest_of(path):
    return json.loads((path / "manifest.json").read_text())


def first_shard(path, suffix):  # the first shard listed (2 rows)
    return path / "shards" / (manifest_of(path)["shards"][0]["name"] + suffix)


MALFORMED = {  # name: (change(index dir), text in the error)
    "manifest not JSON": (lambda p: (p / "manifest.json").write_text("{"), "not valid UTF-8 JSON"),
    "manifest without shards": (lambda p: (p / "manifest.json").write_text(json.dumps(
        {k: v for k, v in manifest_of(p).items() if k != "shards"})), "'shards' must be a list"),
    "manifest dim a string": (lambda p: (p / "manifest.json").write_text(json.dumps(
        {**manifest_of(p), "dim": "16"})), "'dim' must be a positive integer"),
    "shard name with a path": (lambda p: (p / "manifest.json").write_text(json.dumps(
        {**manifest_of(p), "shards": [{"name": "../../etc", "rows": 1}]})), "unique 'name'"),
    "rows do not match": (lambda p: (p / "manifest.json").write_text(json.dumps(
        {**manifest_of(p), "shards": [{**manifest_of(p)["shards"][0], "rows": 3}]})), r"expected float32 \(3, 16\)"),
    "torn metadata line": (lambda p: first_shard(p, ".jsonl").write_bytes(
        first_shard(p, ".jsonl").read_bytes()[:-5]), "expected 2 complete lines"),
    "metadata without source": (lambda p: first_shard(p, ".jsonl").write_text('{"a": 1}\n{"b": 2}\n'),
                                "line 1 is not a JSON object with a 'source' string"),
    "shard of float64": (lambda p: np.save(first_shard(p, ".npy"), np.zeros((2, 16))),
                         r"holds float64 \(2, 16\), expected float32 \(2, 16\)"),
    "shard truncated": (lambda p: first_shard(p, ".npy").write_bytes(first_shard(p, ".npy").read_bytes()[:100]),
                        "cannot read"),
    "shard missing": (lambda p: first_shard(p, ".npy").unlink(), "cannot read"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_file_is_named(name, small_index, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(small_index, broken)
    change, text = MALFORMED[name]
    change(broken)
    with pytest.raises(index.IndexFileError, match=text) as error:
        read_everything(broken)
    assert str(broken) in str(error.value)
    result = run("search", broken, "cat", expect=1)
    assert result.stderr.count("\n") == 1 and str(broken) in result.stderr and "Traceback" not in result.stderr


def test_old_sidecar_without_sources_is_named(tmp_path):  # the KeyError: 'sources'
    np.save(tmp_path / "old.npy", np.zeros((1, 4), np.float32))
    (tmp_path / "old.npy.json").write_text('{"model": "m", "kind": "text", "dim": 4}')
    with pytest.raises(index.IndexFileError, match=r"old\.npy\.json: 'sources' must be a list of strings"):
        read_everything(tmp_path / "old.npy")


@pytest.mark.filterwarnings("ignore:invalid value encountered")  # NaN rows made by a mutation
@pytest.mark.filterwarnings("ignore:Reading `.npy`")  # numpy on a header mutated into Python 2's form
def test_fuzzed_files_fail_cleanly(small_index, tmp_path):
    """Mutated and generated manifests, metadata, shards, sidecars and ann.json: each read either succeeds or
    raises IndexFileError with a message, quickly."""
    hypothesis = pytest.importorskip("hypothesis")
    import shutil
    from hypothesis import strategies as st
    base = tmp_path / "base"
    shutil.copytree(small_index, base)
    files = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file() and p.name != ".lock")
    files += ["ann.json", "legacy"]
    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                               lambda inner: st.lists(inner, max_size=4)
                               | st.dictionaries(st.sampled_from(["format", "model", "kind", "dim", "shards",
                                                                 "name", "rows", "replaces", "source", "size",
                                                                 "mtime_ns", "sources", "file", "nprobe"]),
                                                 inner, max_size=6), max_leaves=12)
    mutation = st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 10 ** 6), st.integers(1, 255)),
        st.tuples(st.just("truncate"), st.integers(0, 10 ** 6)),
        st.tuples(st.just("insert"), st.integers(0, 10 ** 6), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("json"), json_values))

    @hypothesis.settings(max_examples=150, deadline=None, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(st.sampled_from(files), mutation)
    def check(name, change):
        work = tmp_path / uuid.uuid4().hex
        shutil.copytree(base, work)
        target = work / name
        if name == "legacy":  # an old single-file index: mutate its sidecar
            np.save(work / "old.npy", np.zeros((2, 16), np.float32))
            target = work / "old.npy.json"
            target.write_text(json.dumps({"model": "m", "kind": "image", "dim": 16, "sources": ["a", "b"]}))
        elif name == "ann.json":
            target.write_text(json.dumps({"file": "ann-" + "0" * 32 + ".faiss", "shards": [], "rows": 1,
                                          "nlist": 1, "nprobe": 1}))
        data = target.read_bytes()
        if change[0] == "flip" and data:
            at = change[1] % len(data)
            data = data[:at] + bytes([data[at] ^ change[2]]) + data[at + 1:]
        elif change[0] == "truncate":
            data = data[:change[1] % (len(data) + 1)]
        elif change[0] == "insert":
            at = change[1] % (len(data) + 1)
            data = data[:at] + change[2] + data[at:]
        elif change[0] == "json":
            data = json.dumps(change[1]).encode()
        target.write_bytes(data)
        start = time.perf_counter()
        try:
            read_everything(work / "old.npy" if name == "legacy" else work)
        except index.IndexFileError as e:
            assert str(e).strip()
        assert time.perf_counter() - start < 2
        shutil.rmtree(work)

    check()


# ---- Dask ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dask_client():
    pytest.importorskip("distributed")
    from altclip_np import cluster
    with cluster.connect("local:2") as client:
        yield client


def test_local_cluster_rows_equal_single_process(dask_client, ckpt, images, reference, tmp_path):
    out = tmp_path / "dask"
    summary = index.embed([images / "broken.png", *readable(images)], out, model=str(ckpt), client=dask_client,
                          batch_size=2, shard_rows=4, progress=False, warn=lambda m: None)
    assert summary["new"] == 24 and len(summary["skipped"]) == 1 and "broken.png" in summary["skipped"][0][0]
    sources, rows = contents(out)
    assert sorted(sources) == readable(images)
    assert max(float(np.abs(row - reference[s]).max()) for s, row in zip(sources, rows)) == 0  # observed 0
    loads = dask_client.run(lambda: __import__("altclip_np.features").features.bulk_model.cache_info().misses)
    assert sorted(loads.values()) == [1, 1]  # the model was loaded once per worker process, not per task
    assert index.embed(readable(images), out, client=dask_client, progress=False)["new"] == 0  # all skipped


def test_killed_dask_worker_then_rerun(dask_client, ckpt, images, reference, tmp_path):
    out, error = tmp_path / "dask-killed", []

    def embed():
        try:
            index.embed(readable(images), out, model=str(ckpt), client=dask_client, batch_size=2, shard_rows=2,
                        progress=False)
        except Exception as e:  # noqa: BLE001 - a KilledWorker is an acceptable outcome; the rerun must fix it
            error.append(e)

    thread = threading.Thread(target=embed)
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline and not (index.read_manifest(out) if (out / "manifest.json").exists() else None):
        time.sleep(0.05)
    pids = dask_client.run(os.getpid)
    os.kill(random.Random(0).choice(sorted(pids.values())), signal.SIGKILL)
    thread.join(120)
    assert not thread.is_alive()
    index.embed(readable(images), out, client=dask_client, batch_size=2, shard_rows=2, progress=False)
    sources, rows = contents(out)
    assert sorted(sources) == readable(images)
    assert max(float(np.abs(row - reference[s]).max()) for s, row in zip(sources, rows)) == 0
    no_leftovers(out)


def test_cli_on_a_local_cluster_shows_one_bar(ckpt, images, reference, tmp_path):
    pytest.importorskip("distributed")
    out = tmp_path / "cli-dask"
    result = run(*embed_args(out, [images], ckpt, "--scheduler", "local:2"))
    assert result.stdout.strip() == f"{out}: 24 rows (24 new, 0 already there)"
    bar = result.stderr.replace("\r", "\n")
    assert "embedding: 100%" in bar and "25/25" in bar  # batches from both workers, on one bar
    assert {line.split(":")[0] for line in bar.splitlines() if "%|" in line} == {"embedding"}
    assert "skipping" in result.stderr and "broken.png" in result.stderr
    check_rows(out, reference, readable(images))


def test_scheduler_that_does_not_answer(images, tmp_path):
    pytest.importorskip("distributed")
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    result = run("embed", images, "--out", tmp_path / "x", "--scheduler", f"tcp://127.0.0.1:{port}",
                 env={"DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}, expect=1)
    assert time.perf_counter() - start < 30
    assert result.stderr.startswith(f"altclip-np: error: cannot reach the Dask scheduler at tcp://127.0.0.1:{port}")
    assert result.stderr.count("\n") == 1 and not (tmp_path / "x").exists()


def test_scheduler_without_dask_says_how_to_install(images, tmp_path):
    fake = tmp_path / "distributed"  # shadows the real package: importing it fails as if it were not installed
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError(\"No module named 'distributed'\")\n")
    result = run("embed", images, "--out", tmp_path / "x", "--scheduler", "local:2",
                 env={"PYTHONPATH": str(tmp_path)}, expect=1)
    assert result.stderr == ('altclip-np: error: --scheduler needs dask.distributed, which is not installed: '
                             'pip install "altclip-np[dask]"\n')


# ---- approximate search -------------------------------------------------------------------------------------

def synthetic_index(path, n, dim, seed=0, shard_rows=1000):
    """n L2-normalised rows in clusters (like real embeddings, unlike uniform noise); -> rows [n, dim]."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(1, n // 50), dim)).astype(np.float32)
    rows = centers[rng.integers(0, len(centers), n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    (path / "shards").mkdir(parents=True)
    shards = []
    for start in range(0, n, shard_rows):
        name = uuid.uuid4().hex
        index.write_shard(path, name, rows[start:start + shard_rows],
                          [{"source": f"row {i}"} for i in range(start, min(n, start + shard_rows))])
        shards.append({"name": name, "rows": min(shard_rows, n - start), "replaces": []})
    index.write_manifest(path, {"format": 2, "model": "m", "kind": "text", "dim": dim, "shards": shards})
    return rows


def test_approximate_recall_at_10(tmp_path):
    pytest.importorskip("faiss")
    rows = synthetic_index(tmp_path / "syn", 4000, 64)
    info = ann.build(tmp_path / "syn")
    assert info["method"].startswith("IVF") and info["rows"] == 4000
    found = index.open_index(tmp_path / "syn")
    rng = np.random.default_rng(1)
    queries = rows[rng.integers(0, len(rows), 100)] + 0.05 * rng.standard_normal((100, 64)).astype(np.float32)
    recall = []
    for query in queries:
        exact = {h["row"] for h in ann.search(found, query, 10, exact=True)}
        approx = ann.search(found, query, 10)
        recall.append(len(exact & {h["row"] for h in approx}) / 10)
        assert approx[0]["source"] == f"row {approx[0]['row']}"
    assert np.mean(recall) >= 0.95  # observed 1.0


def test_approximate_index_with_shards_added_later(tmp_path, ckpt, images, reference):
    pytest.importorskip("faiss")
    out, sources = tmp_path / "photos", readable(images)
    index.embed(sources[:16], out, model=str(ckpt), batch_size=2, shard_rows=2, progress=False)
    assert "IVF" in run("index", "build", out).stdout
    index.embed(sources, out, batch_size=2, shard_rows=2, progress=False)  # 8 rows more: searched exhaustively
    found = index.open_index(out)
    for source in (sources[3], sources[20]):  # a row from the approximate part, one from a later shard
        hits, exact = ann.search(found, reference[source], 5), ann.search(found, reference[source], 5, exact=True)
        assert hits[0]["source"] == source and [h["row"] for h in hits] == [h["row"] for h in exact]
        np.testing.assert_allclose([h["score"] for h in hits], [h["score"] for h in exact], atol=1e-6)
    a = json.loads(run("search", out, "a photo", "--json").stdout)
    b = json.loads(run("search", out, "a photo", "--json", "--exact").stdout)
    assert [h["source"] for h in a] == [h["source"] for h in b]
    np.testing.assert_allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-6)
