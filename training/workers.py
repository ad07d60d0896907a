"""Worker processes for the per-item loops of `sim-demos` (one expert episode per item) and `convert`
(one bag per item).

    with ordered_results(functools.partial(Recorder, task, camera), range(n), workers=4) as results:
        for out in results:        # item order, whatever order the workers finished in
            ...                    # leaving the loop early stops the workers

`make_worker()` runs once per process and returns a callable (with an optional `close()`) that turns
one item into its result; it and the items must pickle. With workers=1 everything runs in this process,
so the serial run and the parallel one execute the same code per item; `own_process=True` still gives
the one worker a fresh process (a long training run there is not slowed by what this process did before).
Workers are spawned (never forked: the caller may hold torch threads or a GL context) and ignore SIGINT:
Ctrl-C reaches only the caller, whose KeyboardInterrupt leaves the `with` block, which kills the workers
before the caller's own clean-up runs.
"""
from __future__ import annotations

import argparse
import contextlib
import signal

_STATE = None  # this worker process's callable


def add_workers_argument(parser: argparse.ArgumentParser) -> None:
    """The `--workers N` option shared by the steps that spread episodes over processes."""
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="worker processes (default: the number of cores); the output equals the serial run's")


def resolve_workers(workers: int | None) -> int:
    """`--workers` as a count: None -> the cores this process may use."""
    from class_ros.errors import ClassRosError
    from class_ros.sim.pool import available_cores

    if workers is None:
        return available_cores()
    if workers < 1:
        raise ClassRosError(f"--workers must be at least 1, got {workers}.")
    return int(workers)


def _exit_with_parent() -> None:
    """A daemon thread that ends this worker when its parent process is gone, however it went (killed,
    or a pool clean-up that missed a worker): a worker never outlives the run it belongs to."""
    import multiprocessing
    import os
    import threading
    from multiprocessing.connection import wait

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch():
        wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init(make_worker) -> None:
    global _STATE
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and then kills this process
    _exit_with_parent()
    try:
        _STATE = make_worker()
    except Exception as err:  # noqa: BLE001 - raised from the first item: a failing initializer loops forever
        _STATE = err


def _run(item):
    if isinstance(_STATE, Exception):
        raise _STATE
    return _STATE(item)


@contextlib.contextmanager
def ordered_results(make_worker, items, workers: int, *, own_process: bool = False):
    """An iterator of make_worker()(item) for every item, in item order, over `workers` processes (this one
    when workers is 1, unless `own_process`)."""
    if workers <= 1 and not own_process:
        worker = make_worker()

        try:
            yield (worker(item) for item in items)
        finally:
            if hasattr(worker, "close"):
                worker.close()
        return
    import multiprocessing as mp

    pool = mp.get_context("spawn").Pool(workers, initializer=_init, initargs=(make_worker,))
    delivered = False

    def every_result():
        nonlocal delivered
        # chunksize 1: items are whole episodes or bags, far costlier than a round trip.
        yield from pool.imap(_run, items, chunksize=1)
        delivered = True

    try:
        yield every_result()
    finally:
        if delivered:  # the workers exit on their own, their clean-up included
            pool.close()
        else:  # killed: their current items are unwanted (the caller stopped early or failed)
            pool.terminate()
        pool.join()
