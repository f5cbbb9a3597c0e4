"""Embedding shards on a dask.distributed cluster (the optional extra: pip install "altclip-np[dask]").

Each task embeds one shard (index.embed_shard) on a worker, which loads the model once per process
(features.bulk_model) and writes the shard's files into the index directory itself; the client records each
shard in the manifest as its task finishes. Workers report every batch as an event, so the client's one
progress bar moves while shards are still running.
"""
import contextlib
import functools

from .features import InputError, one_line

PROGRESS_TOPIC = "altclip-np-progress"
INSTALL = 'pip install "altclip-np[dask]"'


def _distributed():
    try:
        import distributed
    except ImportError:
        raise InputError(f"--scheduler needs dask.distributed, which is not installed: {INSTALL}") from None
    return distributed


@contextlib.contextmanager
def connect(scheduler, timeout=None):
    """A Client of the scheduler at ADDRESS, or of a new loopback LocalCluster of N single-threaded worker
    processes for "local:N"; closed (with the cluster) on exit. timeout: seconds to reach a scheduler
    (default: dask's distributed.comm.timeouts.connect)."""
    distributed = _distributed()
    if scheduler.startswith("local:"):
        workers = scheduler[len("local:"):]
        if not workers.isdigit() or int(workers) < 1:
            raise InputError(f"--scheduler local:N needs a positive number of workers, got {scheduler!r}")
        # One thread per worker process; NumPy's BLAS and Numba follow (Dask sets OMP/OpenBLAS/MKL to 1 itself).
        with distributed.LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                                      host="127.0.0.1", dashboard_address=None,
                                      env={"NUMBA_NUM_THREADS": "1"}) as cluster, \
                distributed.Client(cluster) as client:
            yield client
        return
    try:
        more = {} if timeout is None else {"timeout": timeout}  # (None would mean: wait for ever)
        client = distributed.Client(scheduler, set_as_default=False, **more)
    except (OSError, TimeoutError, ValueError) as e:
        raise InputError(f"cannot reach the Dask scheduler at {scheduler}: {one_line(e)}") from None
    with client:
        yield client


def _report(shard, rows):  # on a worker: one batch of `shard` is done
    from distributed import get_worker
    get_worker().log_event(PROGRESS_TOPIC, {"shard": shard, "rows": rows})


def run_tasks(client, embed_shard, tasks, bar):
    """Run embed_shard(*task) for each task on the cluster; yield each result as it finishes. On an error the
    tasks still running are cancelled (the finished ones are already yielded, so kept)."""
    distributed = _distributed()
    done, finished = {}, set()  # shard -> inputs done; shards whose result is in

    def on_event(event):  # called by the client's event loop
        _, message = event
        if message["shard"] in finished:
            return
        done[message["shard"]] = done.get(message["shard"], 0) + message["rows"]
        bar.n = sum(done.values())
        bar.refresh()

    client.subscribe_topic(PROGRESS_TOPIC, on_event)
    futures = [client.submit(embed_shard, *task, report=functools.partial(_report, task[4]),
                             key=f"altclip-np-shard-{task[4]}", pure=False) for task in tasks]
    size = {task[4]: len(task[2]) for task in tasks}
    try:
        for future in distributed.as_completed(futures):
            result = future.result()  # raises the task's error
            finished.add(result["name"])
            done[result["name"]] = size[result["name"]]  # exact, even if a retried task reported twice
            bar.n = sum(done.values())
            bar.refresh()
            yield result
    finally:
        client.cancel(futures)
        client.unsubscribe_topic(PROGRESS_TOPIC)
