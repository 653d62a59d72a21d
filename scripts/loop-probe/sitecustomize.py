"""Where a running server's loop time goes: long trio task steps and collector passes.

    PYTHONPATH=scripts/loop-probe .venv/bin/pushy bench api --nodes 2000 --rate 200 ...

Python imports this ``sitecustomize`` in every process started with that PYTHONPATH; only a
``pushy server`` acts on it (its edges and the bench's own processes do nothing). It writes
``$PUSHY_LOOP_PROBE_DIR/loop-probe-PID.txt`` (default: the temporary directory), one line per
event, the wall-clock time first:

- ``step WALL_MS cpu CPU_MS TASK``: a trio task step that took over 5 ms. CPU is the thread's
  own CPU time over the same step: a step whose CPU is far below its wall time was waiting for
  a core (another process had it), not working.
- ``gc genN WALL_MS cpu CPU_MS``: a collector pass over 2 ms.

A diagnostic for benchmarks, not part of the product: it wraps ``trio.run`` to add an
instrument, and costs two clock reads per task step.
"""

import gc
import os
import tempfile
import time

_args = open("/proc/self/cmdline", "rb").read().split(b"\0")[1:4]  # python -m appliance server
if b"server" in _args and (b"appliance" in _args or any(a.endswith(b"pushy") for a in _args)):
    _dir = os.environ.get("PUSHY_LOOP_PROBE_DIR", tempfile.gettempdir())
    _out = open(os.path.join(_dir, f"loop-probe-{os.getpid()}.txt"), "a", buffering=1)
    _gc_start = [0.0, 0.0]

    def _collector(phase: str, info: dict) -> None:
        if phase == "start":
            _gc_start[:] = [time.perf_counter(), time.thread_time()]
            return
        wall = time.perf_counter() - _gc_start[0]
        if wall > 0.002:
            cpu = time.thread_time() - _gc_start[1]
            _out.write(
                f"{time.time():.3f} gc gen{info['generation']} {wall * 1000:.1f} "
                f"cpu {cpu * 1000:.1f}\n"
            )

    gc.callbacks.append(_collector)

    import trio
    import trio.abc

    class _Steps(trio.abc.Instrument):
        def before_task_step(self, task: trio.lowlevel.Task) -> None:
            self.wall, self.cpu = time.perf_counter(), time.thread_time()

        def after_task_step(self, task: trio.lowlevel.Task) -> None:
            wall = time.perf_counter() - self.wall
            if wall > 0.005:
                cpu = time.thread_time() - self.cpu
                _out.write(
                    f"{time.time():.3f} step {wall * 1000:.1f} cpu {cpu * 1000:.1f} {task.name}\n"
                )

    _run = trio.run

    def _probed_run(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        kwargs["instruments"] = [*kwargs.get("instruments", ()), _Steps()]
        return _run(*args, **kwargs)

    trio.run = _probed_run
