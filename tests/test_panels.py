"""The packed-weights store (altclip_np/panels.py): the layout against its loop definition, and the cache file
against pack_numpy, bit for bit, through rebuilds, corruption, two writers at once and a killed writer.

Tiny random checkpoints written with safetensors and read back through weights.SafetensorsFile, so the tensors
are read-only views of a memory-mapped file, as the model passes them. No model, no Numba."""
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np
import pytest
from safetensors.numpy import save_file

from altclip_np import panels
from altclip_np.kernels import pack_panels_numpy as pack_numpy  # the kernel's twin: the layout's definition
from altclip_np.panels import MAGIC, PREFIX, STALE_SECONDS, open_panels, panels_enabled
from altclip_np.weights import PAGE, SafetensorsFile, _mapping, release

SHAPES = {"a.weight": (40, 24), "b.weight": (7, 5), "c.weight": (33, 1), "d.weight": (64, 16)}


def checkpoint(folder, seed=0, shapes=SHAPES):  # -> ({name: read-only view of the file}, its path)
    rng = np.random.default_rng(seed)
    path = folder / "model.safetensors"
    save_file({name: rng.standard_normal(shape, dtype=np.float32) for name, shape in shapes.items()}, str(path))
    f = SafetensorsFile(path)
    return {name: f.get(name) for name in f.keys()}, path


class Counting:  # a pack that counts its calls
    def __init__(self, width):
        self.width, self.calls = width, 0

    def __call__(self, w):
        self.calls += 1
        return pack_numpy(w, self.width)


def assert_packed(views, tensors, width):
    assert views is not None and set(views) == set(tensors)
    for name, w in tensors.items():
        assert np.array_equal(views[name], pack_numpy(w, width)), name
        assert not views[name].flags.writeable
        assert views[name].__array_interface__["data"][0] % PAGE == 0  # each tensor starts on a page


def files(cache, pattern="*"):
    return sorted((cache / "panels").glob(pattern))


def warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "altclip_np" and r.levelno == logging.WARNING]


# ---- the layout --------------------------------------------------------------------------------------

def pack_loop(w, width):  # the definition, one element at a time
    n, k = w.shape
    out = np.zeros((-(-n // width), k, width), np.float32)
    for p in range(out.shape[0]):
        for kk in range(k):
            for j in range(width):
                if p * width + j < n:
                    out[p, kk, j] = w[p * width + j, kk]
    return out


@pytest.mark.parametrize("width", [16, 32])
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (16, 1), (17, 4), (31, 7), (32, 2), (33, 1), (70, 9)])
def test_pack_numpy_follows_its_definition(shape, width):
    w = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    packed = pack_numpy(w, width)
    assert packed.dtype == np.float32 and packed.flags.c_contiguous
    assert np.array_equal(packed, pack_loop(w, width))  # exact: a copy, no arithmetic


# ---- the cache file ----------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [16, 32])
def test_written_once_then_mapped_without_packing(tmp_path, width):
    tensors, src = checkpoint(tmp_path)
    pack = Counting(width)
    assert_packed(open_panels(tensors, width, pack, [src], tmp_path / "cache"), tensors, width)
    assert pack.calls == len(SHAPES)
    again = Counting(width)
    views = open_panels(tensors, width, again, [src], tmp_path / "cache")  # as a new process would
    assert again.calls == 0
    assert_packed(views, tensors, width)
    [path] = files(tmp_path / "cache")
    assert path.read_bytes()[:8] == MAGIC and files(tmp_path / "cache", "*.tmp") == []


def test_the_cache_dir_follows_autotune(tmp_path, monkeypatch):
    tensors, src = checkpoint(tmp_path)
    monkeypatch.setenv("ALTCLIP_NP_CACHE_DIR", str(tmp_path / "env-cache"))
    assert_packed(open_panels(tensors, 16, Counting(16), [src]), tensors, 16)
    assert len(files(tmp_path / "env-cache", "*.panels")) == 1


@pytest.mark.parametrize("change", ["size", "mtime", "width", "shape"])
def test_a_changed_key_packs_again(tmp_path, change):
    tensors, src = checkpoint(tmp_path)
    cache, width = tmp_path / "cache", 16
    open_panels(tensors, width, Counting(width), [src], cache)
    st = os.stat(src)
    if change == "size":
        with open(src, "ab") as f:
            f.write(b" ")
    elif change == "mtime":
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    elif change == "width":
        width = 32
    else:
        tensors = {**tensors, "b.weight": np.ones((9, 5), np.float32)}
    pack = Counting(width)
    assert_packed(open_panels(tensors, width, pack, [src], cache), tensors, width)
    assert pack.calls == len(SHAPES)
    # a new key is a new file; the old one goes if its checkpoint changed, else it stays (it may still be used)
    assert len(files(cache, "*.panels")) == (1 if change in ("size", "mtime") else 2)


def test_only_files_of_a_changed_or_gone_checkpoint_are_removed(tmp_path):
    cache, stores = tmp_path / "cache", []
    for seed, name in enumerate(("kept", "gone")):
        (tmp_path / name).mkdir()
        tensors, src = checkpoint(tmp_path / name, seed=seed)
        open_panels(tensors, 16, Counting(16), [src], cache)
        stores.append((tensors, src))
    stores[1][1].unlink()  # the second checkpoint is deleted
    tensors, src = stores[0]
    open_panels(tensors, 32, Counting(32), [src], cache)  # any build cleans up
    assert len(files(cache, "*.panels")) == 2  # the kept checkpoint's two widths
    pack = Counting(16)
    assert_packed(open_panels(tensors, 16, pack, [src], cache), tensors, 16)
    assert pack.calls == 0


def test_same_size_and_mtime_but_new_values_packs_again(tmp_path, caplog):
    old, src = checkpoint(tmp_path, seed=0)
    cache = tmp_path / "cache"
    open_panels(old, 16, Counting(16), [src], cache)
    st = os.stat(src)
    del old
    new, _ = checkpoint(tmp_path, seed=1)  # same shapes: same size
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(src).st_size, os.stat(src).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    pack = Counting(16)
    views = open_panels(new, 16, pack, [src], cache)
    assert pack.calls == len(SHAPES)
    assert_packed(views, new, 16)
    assert len(warnings(caplog)) == 1 and "does not match" in warnings(caplog)[0]
    assert len(files(cache)) == 1  # replaced under the same name


def corrupt(path, how):
    size = path.stat().st_size
    with open(path, "r+b") as f:
        if how == "truncated":
            f.truncate(size // 2)
        elif how == "empty":
            f.truncate(0)
        elif how == "garbage header":
            f.seek(PREFIX.size)
            f.write(np.random.default_rng(2).bytes(64))
        elif how == "huge header length":
            f.write(PREFIX.pack(MAGIC, panels.FORMAT, 1 << 62))
        elif how == "wrong magic":
            f.write(b"NOTPANEL")
        elif how == "other version":
            f.write(PREFIX.pack(MAGIC, panels.FORMAT + 1, 10))
        elif how == "longer":
            f.seek(size)
            f.write(b"\0" * 100)


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage header", "huge header length", "wrong magic",
                                 "other version", "longer"])
def test_a_corrupt_file_is_replaced(tmp_path, caplog, how):
    tensors, src = checkpoint(tmp_path)
    cache = tmp_path / "cache"
    views = open_panels(tensors, 16, Counting(16), [src], cache)
    del views  # its mapping would see the damage (a truncated one would fault)
    [path] = files(cache)
    corrupt(path, how)
    pack = Counting(16)
    views = open_panels(tensors, 16, pack, [src], cache)
    assert pack.calls == len(SHAPES)
    assert_packed(views, tensors, 16)
    assert len(warnings(caplog)) == 1 and str(path) in warnings(caplog)[0]
    assert files(cache) == [path]


SCRIPT = """
import sys, time
import numpy as np
from altclip_np.kernels import pack_panels_numpy as pack_numpy
from altclip_np.panels import open_panels
from altclip_np.weights import SafetensorsFile
src, cache, start, mode = sys.argv[1:5]
f = SafetensorsFile(src)
tensors = {k: f.get(k) for k in f.keys()}
calls = []
def pack(w):
    calls.append(1)
    if mode == "slow":
        time.sleep(0.3)
    elif mode == "stall" and len(calls) == 2:  # the first tensor is written: say so, then hang until killed
        open(cache + "/stalled", "w").close()
        time.sleep(120)
    return pack_numpy(w, 16)
time.sleep(max(0.0, float(start) - time.time()))
views = open_panels(tensors, 16, pack, [src], cache)
ok = views is not None and all(np.array_equal(views[k], pack_numpy(w, 16)) for k, w in tensors.items())
print("ok" if ok else "wrong", len(calls))
"""


def child(src, cache, start, mode):
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(src), str(cache), str(start), mode],
                            stdout=subprocess.PIPE, text=True)


def test_two_processes_building_at_once(tmp_path):
    tensors, src = checkpoint(tmp_path)
    cache = tmp_path / "cache"
    start = time.time() + 5  # both are past their imports by then, so their builds overlap (4 x 0.3 s each)
    children = [child(src, cache, start, "slow") for _ in range(2)]
    outputs = [c.communicate(timeout=120)[0].split() for c in children]
    assert outputs == [["ok", str(len(SHAPES))]] * 2  # both packed everything, both read correct data
    assert len(files(cache, "*.panels")) == 1 and files(cache, "*.tmp") == []
    pack = Counting(16)
    assert_packed(open_panels(tensors, 16, pack, [src], cache), tensors, 16)
    assert pack.calls == 0


def test_a_killed_build_leaves_no_final_file(tmp_path):
    tensors, src = checkpoint(tmp_path)
    cache = tmp_path / "cache"
    (cache / "panels").mkdir(parents=True)
    writer = child(src, cache, 0, "stall")
    deadline = time.time() + 120
    while not (cache / "stalled").exists() and time.time() < deadline and writer.poll() is None:
        time.sleep(0.05)
    assert (cache / "stalled").exists()
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=60)
    assert files(cache, "*.panels") == []
    [tmp] = files(cache, "*.tmp")
    pack = Counting(16)
    assert_packed(open_panels(tensors, 16, pack, [src], cache), tensors, 16)
    assert pack.calls == len(SHAPES)
    assert files(cache, "*.tmp") == [tmp]  # fresh: it could be a live build's
    os.utime(tmp, (time.time() - STALE_SECONDS - 60,) * 2)
    assert_packed(open_panels(tensors, 32, Counting(32), [src], cache), tensors, 32)  # the next build
    assert files(cache, "*.tmp") == []


def test_an_unwritable_cache_dir_gives_none(tmp_path, caplog):
    tensors, src = checkpoint(tmp_path)
    cache = tmp_path / "cache"
    cache.write_text("a file where a folder should be")  # chmod would not stop root, which runs the tests here
    pack = Counting(16)
    assert open_panels(tensors, 16, pack, [src], cache) is None
    assert pack.calls == 0
    [line] = warnings(caplog)
    assert str(cache / "panels") in line and "without packed weights" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0o500 folder anyway")
def test_a_read_only_cache_dir_gives_none(tmp_path, caplog):
    tensors, src = checkpoint(tmp_path)
    (tmp_path / "cache" / "panels").mkdir(parents=True)
    (tmp_path / "cache" / "panels").chmod(0o500)
    try:
        assert open_panels(tensors, 16, Counting(16), [src], tmp_path / "cache") is None
    finally:
        (tmp_path / "cache" / "panels").chmod(0o700)
    assert len(warnings(caplog)) == 1


def test_not_enough_disk_gives_none(tmp_path, caplog, monkeypatch):
    tensors, src = checkpoint(tmp_path)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**12, 10**12 - 4096, 4096))
    assert open_panels(tensors, 16, Counting(16), [src], tmp_path / "cache") is None
    [line] = warnings(caplog)
    assert "not enough disk space" in line and str(tmp_path / "cache" / "panels") in line
    assert files(tmp_path / "cache") == []


def test_an_oserror_while_building_gives_none_and_no_temporary(tmp_path, caplog):
    tensors, src = checkpoint(tmp_path)

    def pack(w):
        if pack.calls:
            raise OSError(28, "No space left on device")
        pack.calls += 1
        return pack_numpy(w, 16)
    pack.calls = 0
    assert open_panels(tensors, 16, pack, [src], tmp_path / "cache") is None
    [line] = warnings(caplog)
    assert "No space left on device" in line and str(tmp_path / "cache" / "panels") in line
    assert files(tmp_path / "cache") == []


def test_a_wrong_pack_is_an_error_not_a_file(tmp_path):
    tensors, src = checkpoint(tmp_path)
    with pytest.raises(ValueError, match="expected float32"):
        open_panels(tensors, 16, lambda w: pack_numpy(w, 32), [src], tmp_path / "cache")
    assert files(tmp_path / "cache") == []


@pytest.mark.parametrize("value, enabled", [(None, True), ("1", True), ("", True), ("yes", True), ("0", False),
                                            ("false", False), ("No", False), (" off ", False)])
def test_panels_enabled(monkeypatch, caplog, tmp_path, value, enabled):
    if value is None:
        monkeypatch.delenv("ALTCLIP_NP_PANELS", raising=False)
    else:
        monkeypatch.setenv("ALTCLIP_NP_PANELS", value)
    assert panels_enabled() is enabled
    tensors, src = checkpoint(tmp_path)
    views = open_panels(tensors, 16, Counting(16), [src], tmp_path / "cache")
    assert (views is not None) is enabled and len(warnings(caplog)) == (not enabled)


def test_release_gives_pages_back_and_keeps_the_data(tmp_path):
    tensors, src = checkpoint(tmp_path, shapes={"big.weight": (300, 200), "small.weight": (3, 2)})
    views = open_panels(tensors, 16, Counting(16), [src], tmp_path / "cache")
    assert all(_mapping(v) is not None for v in views.values())  # chained to the mmap: release reaches it
    before = {name: np.array(v) for name, v in views.items()}
    release(list(views.values()))
    for name, v in views.items():
        assert np.array_equal(v, before[name]) and np.array_equal(v, pack_numpy(tensors[name], 16))
