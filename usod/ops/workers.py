"""The process pool of the per-image CPU work (denseCRF, handcrafted saliency).

One pool shape for both: ``forkserver`` workers (not ``fork``: the caller may hold torch/CUDA threads that a
forked child would inherit broken; ``spawn`` where there is no forkserver), one OpenCV thread per worker (one
image per process; more threads would oversubscribe the cores), and workers that exit when the process that
started them dies, even by ``kill -9`` (they would otherwise wait for work forever, and keep the forkserver
alive with them).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import threading
import time

#: Seconds between a worker's checks that its starting process is alive.
PARENT_CHECK_S = 1.0


def _exit_with(parent: int) -> None:
    def watch() -> None:
        while True:
            time.sleep(PARENT_CHECK_S)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:  # pragma: no cover - alive, owned by another user
                pass

    threading.Thread(target=watch, name="usod-parent-watch", daemon=True).start()


def _init_worker(parent: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    _exit_with(parent)


def worker_pool(workers: int, mp_context: str | None = None) -> concurrent.futures.ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` processes as described in the module docstring.

    Args:
        workers: Number of processes (at least 1).
        mp_context: Start method; ``None`` is ``"forkserver"`` on POSIX, else ``"spawn"``.
    """
    ctx = multiprocessing.get_context(mp_context or ("forkserver" if os.name == "posix" else "spawn"))
    return concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)
    )
