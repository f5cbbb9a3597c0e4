"""The embedding index: a directory that grows by appending immutable shards, listed by a small manifest.

    INDEX/manifest.json      {"format": 2, "model", "kind", "dim", "shards": [{"name", "rows", "replaces"}, ...]}
    INDEX/shards/NAME.npy    float32 [rows, dim], L2-normalised (memory-mapped by search)
    INDEX/shards/NAME.jsonl  one JSON object per row: {"source"}, and "size", "mtime_ns" for an image
    INDEX/ann.json, ann-*.faiss   an optional approximate index of the shards it lists (see ann.py)
    INDEX/.lock              flock'd by the one run that writes

Why nothing is lost: every file is written under a unique temporary name, fsync'd, renamed into place and its
directory fsync'd; a shard (.npy, then .jsonl) is listed in the manifest only after that, and the manifest is
replaced the same way. Nothing is rewritten in place, so a kill at any point leaves the last manifest and every
shard it lists intact; files it does not list are leftovers the next writer removes. A source embedded again
(an image whose size or mtime changed) keeps its old row on disk: the new shard's "replaces" lists the old
[shard, row], which readers skip. An old single-file index (FILE.npy + FILE.npy.json) still opens for search.
"""
import contextlib
import fcntl
import json
import math
import os
import re
import uuid
from pathlib import Path

import numpy as np

from .features import DEFAULT_MODEL, InputError, bulk_model, image_features, load_pixels, model_id, one_line, \
    text_features

FORMAT, LEGACY_FORMAT = 2, 1
MANIFEST, SHARDS, LOCK = "manifest.json", "shards", ".lock"
KINDS = ("image", "text")
NAME = re.compile(r"[0-9A-Za-z_-]{1,64}")


class IndexFileError(InputError):
    """An index file (manifest, shard, metadata, sidecar) that is malformed or does not match the rest."""


class IndexBusyError(OSError):
    """Another run holds the index's write lock."""


def is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def require(ok, path, what):
    if not ok:
        raise IndexFileError(f"{path}: {what}")


def read_json(path):
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except OSError as e:
        raise IndexFileError(f"cannot read {path}: {one_line(e)}") from None
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError; absurd nesting
        raise IndexFileError(f"{path} is not valid UTF-8 JSON: {one_line(e)}") from None


# ---- durable writes and the write lock ---------------------------------------------------------------------

def fsync_dir(directory):
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(tmp, path):
    """Rename a written and fsync'd file into place, then fsync its directory so the rename survives a crash."""
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_file(path, write):
    """Create or replace `path` whole with what write(binary file) writes; never a half-written file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")  # unique: concurrent writers never share one
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        durable_replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def locked(directory, wait=False, on_wait=print):
    """Hold INDEX/.lock (flock: released by the kernel however the process ends). A second writer fails at
    once with IndexBusyError, or with wait=True calls on_wait(message) and waits its turn."""
    with open(Path(directory) / LOCK, "a+", encoding="utf-8") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip()
            who = f" (pid {holder})" if holder.isdigit() else ""
            if not wait:
                raise IndexBusyError(f"{directory} is being written by another run{who}; "
                                     "rerun when it has finished, or pass --wait to wait for it") from None
            on_wait(f"waiting for another run{who} to finish writing {directory}")
            fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        yield


# ---- reading: manifest, shards, metadata --------------------------------------------------------------------

def check_header(meta, path):
    require(isinstance(meta, dict), path, "expected a JSON object")
    require(isinstance(meta.get("model"), str) and meta["model"], path, "'model' must be a non-empty string")
    require(meta.get("kind") in KINDS, path, f"'kind' must be one of {KINDS}, got {meta.get('kind')!r}")
    require(is_int(meta.get("dim")) and 0 < meta["dim"] <= 1 << 16, path, "'dim' must be a positive integer")


def read_manifest(directory):
    """The validated manifest of an index directory, None if it has none yet."""
    path = Path(directory) / MANIFEST
    if not path.exists():
        return None
    manifest = read_json(path)
    check_header(manifest, path)
    require(manifest.get("format") == FORMAT, path, f"'format' must be {FORMAT}, got {manifest.get('format')!r}")
    shards = manifest.get("shards")
    require(isinstance(shards, list), path, "'shards' must be a list")
    rows = {}
    for i, shard in enumerate(shards):
        require(isinstance(shard, dict), path, f"shards[{i}] must be an object")
        name, n, replaces = shard.get("name"), shard.get("rows"), shard.get("replaces", [])
        require(isinstance(name, str) and NAME.fullmatch(name) and name not in rows, path,
                f"shards[{i}] needs a unique 'name' of 1-64 letters, digits, '_' or '-'")
        require(is_int(n) and n > 0, path, f"shards[{i}] 'rows' must be a positive integer")
        require(isinstance(replaces, list) and all(
            isinstance(r, list) and len(r) == 2 and r[0] in rows and is_int(r[1]) and 0 <= r[1] < rows[r[0]]
            for r in replaces), path, f"shards[{i}] 'replaces' must list [earlier shard, row] pairs")
        rows[name] = n
    return manifest


def metadata_lines(path, n):  # -> a shard's n metadata lines (bytes), not parsed yet
    try:
        lines = Path(path).read_bytes().split(b"\n")
    except OSError as e:
        raise IndexFileError(f"cannot read {path}: {one_line(e)}") from None
    require(lines[-1] == b"" and len(lines) - 1 == n, path, f"expected {n} complete lines, one per row")
    return lines[:-1]


def parse_metadata(path, number, line, kind):  # line `number` (from 1) of a shard's metadata -> {"source", ...}
    try:
        meta = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        meta = None
    require(isinstance(meta, dict) and isinstance(meta.get("source"), str), path,
            f"line {number} is not a JSON object with a 'source' string")
    require(kind == "text" or all(is_int(meta.get(k, 0)) for k in ("size", "mtime_ns")), path,
            f"line {number}: 'size' and 'mtime_ns' must be integers")
    return meta


def load_npy(path):  # a .npy file, memory-mapped
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - a damaged header can fail in many ways (even tokenize.TokenError)
        raise IndexFileError(f"cannot read {path}: {type(e).__name__}: {one_line(e)}") from None


def map_rows(path, n, dim):
    """A float32 [n, dim] .npy file, memory-mapped."""
    rows = load_npy(path)
    require(rows.dtype == np.float32 and rows.shape == (n, dim), path,
            f"holds {rows.dtype} {rows.shape}, expected float32 ({n}, {dim})")
    return rows


class Index:
    """A readable index: the header (model, kind, dim), its shards' rows and metadata, and which rows are live."""

    def __init__(self, path, header, shards):
        self.path, self.header, self.shards = Path(path), header, shards
        self.model, self.kind, self.dim = header["model"], header["kind"], header["dim"]
        self.offsets = np.cumsum([0] + [s["rows"] for s in shards])  # shard i has global rows offsets[i]:[i+1]
        position = {s["name"]: i for i, s in enumerate(shards)}
        self.dead = {}  # shard number -> local rows replaced by a later shard
        for shard in shards:
            for name, row in shard.get("replaces", []):
                self.dead.setdefault(position[name], []).append(row)
        self._metadata, self._raw = {}, {}

    def __len__(self):  # live rows
        return int(self.offsets[-1]) - sum(map(len, self.dead.values()))

    def rows(self, i):  # -> [rows, dim] float32 (memory-mapped)
        name = self.shards[i]["name"]
        return map_rows(self.path / SHARDS / f"{name}.npy", self.shards[i]["rows"], self.dim)

    def _lines(self, i):
        if i not in self._raw:
            self._raw[i] = metadata_lines(self._metadata_path(i), self.shards[i]["rows"])
        return self._raw[i]

    def _metadata_path(self, i):
        return self.path / SHARDS / f"{self.shards[i]['name']}.jsonl"

    def metadata(self, i):  # -> [{"source", ...}] of shard i
        if i not in self._metadata:
            path = self._metadata_path(i)
            self._metadata[i] = [parse_metadata(path, n, line, self.kind) for n, line in enumerate(self._lines(i), 1)]
        return self._metadata[i]

    def meta(self, i, row):  # -> {"source", ...} of one row (search: parses only the lines of its hits)
        if i in self._metadata:
            return self._metadata[i][row]
        return parse_metadata(self._metadata_path(i), row + 1, self._lines(i)[row], self.kind)

    def locate(self, row):  # global row -> (shard number, local row)
        i = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return i, int(row - self.offsets[i])

    def live(self):
        """{source: (shard number, local row, metadata)} of every live row (reads all metadata)."""
        found = {}
        for i in range(len(self.shards)):
            dead = set(self.dead.get(i, ()))
            for row, meta in enumerate(self.metadata(i)):
                if row not in dead:
                    found[meta["source"]] = (i, row, meta)
        return found


class LegacyIndex(Index):
    """An index written before format 2: FILE.npy, and FILE.npy.json whose source list counts the valid rows."""

    def __init__(self, path):
        side = Path(f"{path}.json")
        meta = read_json(side)
        check_header(meta, side)
        sources = meta.get("sources")
        require(isinstance(sources, list) and all(isinstance(s, str) for s in sources), side,
                "'sources' must be a list of strings")
        super().__init__(path, meta, [{"name": "legacy", "rows": len(sources)}] if sources else [])
        self._metadata = {0: [{"source": s} for s in sources]}

    def rows(self, i):
        n, rows = self.shards[i]["rows"], load_npy(self.path)
        require(rows.dtype == np.float32 and rows.ndim == 2 and rows.shape[0] >= n and rows.shape[1] == self.dim,
                self.path, f"holds {rows.dtype} {rows.shape}, its sidecar {n} rows of {self.dim}")
        return rows[:n]


def open_index(path):
    """The index at `path` (a directory, or an old FILE.npy with FILE.npy.json); None if there is none yet."""
    path = Path(path)
    if path.is_dir():
        manifest = read_manifest(path)
        return None if manifest is None else Index(path, manifest, manifest["shards"])
    if Path(f"{path}.json").is_file():
        return LegacyIndex(path)
    if path.exists():
        raise IndexFileError(f"{path} is not an altclip-np index (a directory with {MANIFEST}, "
                             f"or FILE.npy with FILE.npy.json)")
    return None


# ---- exact search -------------------------------------------------------------------------------------------

def merge_top_k(scores, rows, k):  # candidate arrays -> (scores, global rows) of the best k, best first
    scores, rows = np.concatenate(scores), np.concatenate(rows)
    order = np.lexsort((rows, -scores))[:k]  # ties: the lower row first
    return scores[order], rows[order]


def exact_search(index, query, k, shards=None, chunk=65536):
    """Best k live rows by inner product with query [dim]: chunked, so memory stays O(chunk) whatever the size."""
    found_scores, found_rows = [np.zeros(0, np.float32)], [np.zeros(0, np.int64)]
    for i in range(len(index.shards)) if shards is None else shards:
        rows, dead = index.rows(i), np.asarray(index.dead.get(i, []), dtype=np.int64)
        for start in range(0, len(rows), chunk):
            scores = rows[start:start + chunk] @ query  # [chunk]
            local = dead[(dead >= start) & (dead < start + len(scores))] - start
            scores[local] = -np.inf
            best = np.argpartition(-scores, min(k, len(scores)) - 1)[:k] if len(scores) > k else np.arange(len(scores))
            best = best[np.isfinite(scores[best])]
            found_scores.append(scores[best])
            found_rows.append(best + index.offsets[i] + start)
    return merge_top_k(found_scores, found_rows, k)


def hits(index, scores, rows):  # -> [{"rank", "score", "row", "source", ...metadata}]
    found = []
    for rank, (score, row) in enumerate(zip(scores, rows), 1):
        i, local = index.locate(row)
        found.append({"rank": rank, "score": float(score), "row": int(row), **index.meta(i, local)})
    return found


# ---- writing: shards, manifest, embedding -------------------------------------------------------------------

def write_shard(directory, name, rows, metas):
    """Write a finished shard's two files (the .jsonl last: it marks the shard complete)."""
    shards = Path(directory) / SHARDS
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    write_file(shards / f"{name}.npy", lambda f: np.lib.format.write_array(f, rows, allow_pickle=False))
    text = "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in metas)
    write_file(shards / f"{name}.jsonl", lambda f: f.write(text.encode("utf-8")))


def write_manifest(directory, manifest):
    text = json.dumps(manifest, ensure_ascii=False, indent=1) + "\n"
    write_file(Path(directory) / MANIFEST, lambda f: f.write(text.encode("utf-8")))


def remove_leftovers(directory, manifest):
    """Under the lock: delete temporary files and shard files no manifest lists (a killed run's)."""
    keep = {s["name"] for s in manifest["shards"]} if manifest else set()
    for f in list((directory / SHARDS).iterdir()) + list(directory.glob(".*.tmp")):
        if f.name.endswith(".tmp") or (f.suffix in (".npy", ".jsonl") and f.stem not in keep):
            f.unlink(missing_ok=True)


def file_stamp(path):  # what tells a changed image: size and modification time
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def embed_shard(model_name, kind, sources, directory, name, batch_size, report=None):
    """Embed sources into shard `name` of the index at `directory` (in this process: a Dask worker or the
    caller); unreadable images are skipped. -> {"name", "rows", "dim", "sources", "skipped"}"""
    model, processor = bulk_model(model_name)
    rows, metas, skipped = [], [], []
    for start in range(0, len(sources), batch_size):
        batch = sources[start:start + batch_size]
        if kind == "text":
            rows.append(text_features(model, processor, batch))
            metas += [{"source": s} for s in batch]
        else:
            pixels = []
            for source in batch:
                try:
                    stamp = file_stamp(source)  # before reading: a file changed meanwhile is re-embedded later
                    pixels.append(load_pixels(processor, source))
                    metas.append({"source": source, **stamp})
                except (InputError, OSError) as e:
                    skipped.append((source, one_line(e)))
            if pixels:
                rows.append(image_features(model, np.stack(pixels)))
        if report:
            report(len(batch))
    if metas:
        write_shard(directory, name, np.concatenate(rows).astype(np.float32, copy=False), metas)
    return {"name": name, "rows": len(metas), "dim": int(model.config.projection_dim),
            "sources": [m["source"] for m in metas], "skipped": skipped}


def plan(index, kind, sources):
    """(sources to embed, {source: [shard, row] it replaces}): new sources, and images changed since."""
    live = index.live() if index else {}
    todo, replaces = [], {}
    for source in sources:
        if source in live:
            i, row, meta = live[source]
            try:
                unchanged = kind == "text" or "size" not in meta or file_stamp(source) == {
                    k: meta[k] for k in ("size", "mtime_ns")}
            except OSError:
                unchanged = False  # gone: embed_shard reports it
            if unchanged:
                continue
            replaces[source] = [index.shards[i]["name"], row]
        todo.append(source)
    return todo, replaces


def shard_tasks(todo, shard_rows, batch_size):  # -> [[sources]]; shards hold whole batches
    shard_rows = max(batch_size, shard_rows // batch_size * batch_size)
    return [todo[i:i + shard_rows] for i in range(0, len(todo), shard_rows)]


def embed(sources, out, model=None, kind="image", client=None, batch_size=16, shard_rows=1024, wait=False,
          progress=True, warn=print):
    """Embed image paths or texts into the index directory `out`: sources already there (and unchanged) are
    skipped, the rest written as new shards. With a dask.distributed `client`, shards are embedded on its
    workers (which must see `out` and the model at the same paths). Every finished shard is recorded at once,
    so an interrupted run loses at most the shards in flight.
    -> {"rows": live rows, "new": rows added, "already": sources skipped, "skipped": [(source, why)]}"""
    from tqdm import tqdm
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    out, sources = Path(out), list(dict.fromkeys(os.path.abspath(s) if kind == "image" else s for s in sources))
    if out.is_file() or Path(f"{out}.json").is_file():
        raise InputError(f"{out} is a single-file index (format {LEGACY_FORMAT}), which embed does not append "
                         f"to; convert it first: altclip-np index convert {out} NEW_INDEX")
    out.mkdir(exist_ok=True)
    (out / SHARDS).mkdir(exist_ok=True)
    with locked(out, wait, warn):
        manifest = read_manifest(out)
        name = model or (manifest["model"] if manifest else DEFAULT_MODEL)
        if manifest and (manifest["model"], manifest["kind"]) != (model_id(name), kind):
            raise InputError(f"{out} holds {manifest['kind']} embeddings from {manifest['model']}; use another "
                             f"index for {kind} embeddings from {model_id(name)}")
        remove_leftovers(out, manifest)
        index = manifest and Index(out, manifest, manifest["shards"])
        todo, replaces = plan(index, kind, sources)
        if client is None:
            bulk_model(name)  # a model that cannot load fails here, before anything is written
        else:
            workers = max(1, len(client.scheduler_info().get("workers", {})))
            shard_rows = min(shard_rows, max(1, math.ceil(len(todo) / (4 * workers))))  # work for every worker
        tasks = [(name, kind, chunk, str(out), uuid.uuid4().hex, batch_size)
                 for chunk in shard_tasks(todo, shard_rows, batch_size)]
        new, skipped = 0, []
        with tqdm(total=len(todo), unit="img" if kind == "image" else "text", desc="embedding",
                  disable=not progress or not todo, dynamic_ncols=True) as bar:
            if client is None:
                results = (embed_shard(*task, report=bar.update) for task in tasks)
            else:
                from .cluster import run_tasks
                results = run_tasks(client, embed_shard, tasks, bar)
            for result in results:
                for source, why in result["skipped"]:
                    warn(f"skipping {source}: {why}")
                skipped += result["skipped"]
                if result["rows"]:
                    manifest = manifest or {"format": FORMAT, "model": model_id(name), "kind": kind,
                                            "dim": result["dim"], "shards": []}
                    entry = {"name": result["name"], "rows": result["rows"],
                             "replaces": [replaces[s] for s in result["sources"] if s in replaces]}
                    manifest = {**manifest, "shards": manifest["shards"] + [entry]}
                    write_manifest(out, manifest)
                    new += result["rows"]
    final = open_index(out)
    return {"rows": len(final) if final else 0, "new": new, "already": len(sources) - len(todo),
            "skipped": skipped}


def convert(old, new, wait=False, warn=print):
    """Copy an old single-file index into a new index directory (one shard). Images get the size and mtime
    they have now, so only later changes re-embed them."""
    index, new = open_index(old), Path(new)
    if not isinstance(index, LegacyIndex):
        raise InputError(f"{old} is not a single-file index (FILE.npy with FILE.npy.json)")
    new.mkdir(exist_ok=True)
    (new / SHARDS).mkdir(exist_ok=True)
    with locked(new, wait, warn):
        if read_manifest(new) is not None:
            raise InputError(f"{new} already holds an index; convert into a new directory")
        shards = []
        if index.shards:
            metas = [{**m, **(file_stamp(m["source"]) if index.kind == "image" and os.path.isfile(m["source"])
                               else {})} for m in index.metadata(0)]
            name = uuid.uuid4().hex
            write_shard(new, name, np.ascontiguousarray(index.rows(0)), metas)
            shards = [{"name": name, "rows": len(metas), "replaces": []}]
        write_manifest(new, {"format": FORMAT, "model": index.model, "kind": index.kind, "dim": index.dim,
                             "shards": shards})
    return len(index)
