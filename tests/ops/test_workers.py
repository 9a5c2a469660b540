"""``usod.ops.workers.worker_pool``: the per-image process pool."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.is_file() and status.read_text().split()[2] == "Z")  # a zombie has exited


def test_workers_exit_when_the_starting_process_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import os, time
            from usod.ops.workers import worker_pool

            def task(i):
                open(os.path.join({str(tmp_path)!r}, f"worker-{{os.getpid()}}"), "w").close()
                time.sleep(60)

            if __name__ == "__main__":
                with worker_pool(2) as pool:
                    list(pool.map(task, range(4)))
            """
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    job = subprocess.Popen([sys.executable, str(script)], env=env)
    deadline = time.time() + 60
    while len(list(tmp_path.glob("worker-*"))) < 2 and time.time() < deadline:
        time.sleep(0.2)
    workers = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
    assert len(workers) == 2 and all(_alive(pid) for pid in workers)
    job.send_signal(signal.SIGKILL)  # no cleanup of any kind in the starting process
    job.wait()
    deadline = time.time() + 15
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not any(_alive(pid) for pid in workers), "workers outlived the process that started them"
