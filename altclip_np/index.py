"""The embedding index the `altclip-np embed` / `search` commands share: FILE.npy + its sidecar FILE.npy.json,
and a journal while embedding, so an interrupted run resumes without losing or duplicating rows.
"""
import json
import os
from pathlib import Path

import numpy as np

# Test hook: "batch:N" dies (like a kill -9) after N journaled batches, "commit" between the .npy and
# sidecar replacement of a commit. Used by tests/test_cli.py to check resuming.
CRASH_ENV = "ALTCLIP_NP_TEST_CRASH"


INDEX_FORMAT = 1


class IndexFileError(ValueError):
    """An index or sidecar that cannot be read or does not match."""


def one_line(error):
    return " ".join(str(error).split()) or type(error).__name__


# ---- the index: FILE.npy + FILE.npy.json, and a journal while embedding ------------------------------------
# The .npy and its sidecar are only ever replaced whole (os.replace), .npy first; the sidecar's source list is
# the authority on how many rows are valid. While embedding, each batch is appended to a journal
# (FILE.npy.part: raw float32 rows; FILE.npy.part.jsonl: a header line, then one source per row, written after
# its rows), so a killed run loses at most the batch in flight; the next run commits the journal first.

def sidecar_path(out):
    return Path(f"{out}.json")


def journal_paths(out):
    return Path(f"{out}.part"), Path(f"{out}.part.jsonl")


def read_index(out):
    """(meta, rows) of an existing index, (None, None) if there is none yet."""
    out, side = Path(out), sidecar_path(out)
    if not side.is_file():
        # (a first commit that died before writing the sidecar leaves the .npy and the journal: no index yet)
        if out.exists() and not journal_paths(out)[1].is_file():
            raise IndexFileError(f"{out} has no sidecar {side.name}, so it is not an altclip-np index")
        return None, None
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
        rows = np.load(out, mmap_mode="r")
    except (OSError, ValueError) as e:
        raise IndexFileError(f"cannot read index {out}: {one_line(e)}") from None
    n = len(meta["sources"])
    if rows.ndim != 2 or rows.shape[0] < n or rows.shape[1] != meta["dim"]:
        raise IndexFileError(f"index {out} ({rows.shape}) does not match its sidecar ({n} rows of {meta['dim']})")
    return meta, rows[:n]


def journal_model(out):
    """The model an interrupted run was using (from its journal's header), or None."""
    try:
        with open(journal_paths(out)[1], encoding="utf-8") as log:
            return json.loads(log.readline())["model"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_journal(out, header, warn):
    """(sources, rows) of a journal left by an interrupted run with this header; torn tails are dropped.
    A journal written for another model or kind of input is ignored, with `warn(message)`."""
    part, log = journal_paths(out)
    if not (part.is_file() and log.is_file()):
        return [], None
    lines = log.read_bytes().split(b"\n")[:-1]  # a torn last line has no newline yet
    if not lines or json.loads(lines[0]) != header:
        warn(f"ignoring {log.name}: it was written for another model or kind of input")
        return [], None
    sources = [json.loads(line) for line in lines[1:]]
    n = min(len(sources), part.stat().st_size // (4 * header["dim"]))
    return sources[:n], np.fromfile(part, dtype=np.float32, count=n * header["dim"]).reshape(n, header["dim"])


def write_index(out, meta, old_rows, new_sources, new_rows):
    """Atomically replace the index with old rows + new rows; then drop the journal."""
    known = set(meta["sources"])
    keep = [i for i, s in enumerate(new_sources) if s not in known]  # a commit may have died after the sidecar
    sources = meta["sources"] + [new_sources[i] for i in keep]
    n_old = 0 if old_rows is None else len(old_rows)
    tmp = Path(f"{out}.tmp.npy")
    if sources:  # written through a memory map, so the old index is never all in memory at once
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(sources), meta["dim"]))
        if n_old:
            rows[:n_old] = old_rows
        if keep:
            rows[n_old:] = new_rows[keep]
        rows.flush()
        del rows
    else:  # (a zero-length file cannot be memory-mapped)
        np.save(tmp, np.zeros((0, meta["dim"]), dtype=np.float32))
    os.replace(tmp, out)
    if os.environ.get(CRASH_ENV) == "commit":
        os._exit(99)
    side_tmp = Path(f"{sidecar_path(out)}.tmp")
    side_tmp.write_text(json.dumps({**meta, "sources": sources}, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(side_tmp, sidecar_path(out))
    for path in reversed(journal_paths(out)):
        path.unlink(missing_ok=True)
    return sources


class Journal:
    """Append-only record of the rows embedded by the current run."""

    def __init__(self, out, header):
        part, log = journal_paths(out)
        self.rows, self.log = open(part, "wb"), open(log, "w", encoding="utf-8")
        self.log.write(json.dumps(header) + "\n")
        self.log.flush()
        self.batches = 0

    def append(self, sources, rows):
        self.rows.write(np.ascontiguousarray(rows, dtype=np.float32).tobytes())
        self.rows.flush()  # rows before their sources: a source line always has its row
        self.log.write("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in sources))
        self.log.flush()
        self.batches += 1
        if os.environ.get(CRASH_ENV) == f"batch:{self.batches}":
            os._exit(99)

    def close(self):
        self.rows.close()
        self.log.close()
