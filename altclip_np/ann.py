"""Search: exhaustive by default, approximate with a faiss IVF index (the extra: pip install "altclip-np[faiss]").

`build` writes an inverted-file index of the live rows (inner product, which is cosine on these L2-normalised
rows) beside the shards: INDEX/ann-ID.faiss, then INDEX/ann.json {"file", "shards" it covers, "rows", "nlist",
"nprobe"}. Sized to the row count: nlist = 2*sqrt(rows) lists (>= 39 rows each), trained by 10 k-means
iterations on <= 64 rows per list; a query scans nprobe = max(8, nlist/64) lists. `search` uses it when
present: the shards it covers approximately, shards added after the build exhaustively, merged; rows
replaced since are skipped.
"""
import json
import math
import os
import re
import time
import uuid
from pathlib import Path

import numpy as np

from .features import InputError, one_line
from .index import (IndexFileError, durable_replace, exact_search, hits, is_int, locked,
                    merge_top_k, open_index, read_json, require, write_file)

INFO = "ann.json"
FILE = re.compile(r"ann-[0-9a-f]{32}\.faiss")


def _faiss():
    try:
        import faiss
    except ImportError:
        raise InputError('an approximate index needs faiss, which is not installed: '
                         'pip install "altclip-np[faiss]"') from None
    return faiss


def sizes(rows):  # -> (nlist, nprobe) for an index of `rows` rows
    nlist = max(1, min(round(2 * math.sqrt(rows)), rows // 39))
    return nlist, min(nlist, max(8, nlist // 64))


def live_rows(index, i):  # -> (rows [n, dim], global ids [n]) of shard i's live rows
    rows, keep = index.rows(i), np.ones(index.shards[i]["rows"], dtype=bool)
    keep[index.dead.get(i, [])] = False
    return np.ascontiguousarray(rows[keep]), np.flatnonzero(keep) + index.offsets[i]


def build(path, wait=False, warn=print, seed=0):
    """Build the approximate index of the index directory `path`; -> {"method", "rows", "seconds"}."""
    faiss, start = _faiss(), time.perf_counter()
    if not Path(path).is_dir():
        raise InputError(f"{path} is not an index directory (an old single-file index: `altclip-np index convert`)")
    with locked(path, wait, warn):
        index = open_index(path)
        if index is None or not len(index):
            raise InputError(f"{path} has no rows to index")
        n, (nlist, nprobe) = len(index), sizes(len(index))
        rng = np.random.default_rng(seed)
        train = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))  # live-row numbers
        parts, seen = [], 0
        for i in range(len(index.shards)):  # gather the training sample shard by shard
            rows, _ = live_rows(index, i)
            pick = train[(train >= seen) & (train < seen + len(rows))] - seen
            parts.append(rows[pick])
            seen += len(rows)
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(index.dim), index.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.min_points_per_centroid = 1  # small indexes: no warning that nlist is small for the rows
        ivf.cp.niter = 10  # k-means iterations (faiss: 25); training is most of the build time at 1M rows
        ivf.train(np.concatenate(parts))
        for i in range(len(index.shards)):
            rows, ids = live_rows(index, i)
            ivf.add_with_ids(rows, ids.astype(np.int64))
        name = f"ann-{uuid.uuid4().hex}.faiss"
        tmp = Path(path) / f".{name}.tmp"
        try:
            faiss.write_index(ivf, str(tmp))
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            durable_replace(tmp, Path(path) / name)
        finally:
            tmp.unlink(missing_ok=True)
        info = {"file": name, "shards": [s["name"] for s in index.shards], "rows": n, "nlist": nlist,
                "nprobe": nprobe}
        text = json.dumps(info, indent=1) + "\n"
        write_file(Path(path) / INFO, lambda f: f.write(text.encode("utf-8")))
        for f in Path(path).glob("ann-*.faiss"):  # the previous build's (and a killed build's) files
            if f.name != name:
                f.unlink(missing_ok=True)
    return {"method": f"IVF{nlist} (nprobe {nprobe})", "rows": n, "seconds": time.perf_counter() - start}


def read_info(path):
    """The validated ann.json of an index directory, None if there is none."""
    info_path = Path(path) / INFO
    if not info_path.exists():
        return None
    info = read_json(info_path)
    require(isinstance(info, dict), info_path, "expected a JSON object")
    require(isinstance(info.get("file"), str) and FILE.fullmatch(info["file"]), info_path,
            "'file' must name an ann-ID.faiss file beside it")
    require(isinstance(info.get("shards"), list) and all(isinstance(s, str) for s in info["shards"]), info_path,
            "'shards' must be a list of shard names")
    for key in ("rows", "nlist", "nprobe"):
        require(is_int(info.get(key)) and info[key] > 0, info_path, f"'{key}' must be a positive integer")
    return info


def load(index):
    """(faiss index, info) for an Index whose directory has a matching approximate index, else None;
    kept on the Index, so later searches with it do not load it again."""
    if not hasattr(index, "_ann"):
        index._ann = _load(index)
    return index._ann


def _load(index):
    if not index.path.is_dir():
        return None
    info = read_info(index.path)
    if info is None:
        return None
    info_path = index.path / INFO
    names = [s["name"] for s in index.shards]
    require(info["shards"] == names[:len(info["shards"])], info_path,
            "lists shards the manifest does not have (rebuild it: altclip-np index build)")
    faiss = _faiss()
    try:
        ivf = faiss.read_index(str(index.path / info["file"]), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as e:
        raise IndexFileError(f"cannot read {index.path / info['file']}: {one_line(e)}") from None
    require(ivf.d == index.dim and ivf.ntotal == info["rows"], info_path,
            f"does not match {info['file']} ({ivf.ntotal} rows of {ivf.d}) or the index's {index.dim}-d rows")
    ivf.nprobe = info["nprobe"]
    return ivf, info


def search(index, query, k, exact=False):
    """[{"rank", "score", "row", "source", ...}] of the k best live rows of an Index for query [dim]."""
    found = None if exact else load(index)
    if found is None:
        return hits(index, *exact_search(index, query, k))
    ivf, info = found
    covered = len(info["shards"])
    dead = {int(index.offsets[i]) + row for i, rows in index.dead.items() if i < covered for row in rows}
    scores, rows = ivf.search(np.asarray(query, dtype=np.float32)[None], k + len(dead))  # dead: replaced since
    keep = [j for j, row in enumerate(rows[0]) if row >= 0 and int(row) not in dead]
    later = exact_search(index, query, k, shards=range(covered, len(index.shards)))
    return hits(index, *merge_top_k([scores[0][keep], later[0]], [rows[0][keep], later[1]], k))
