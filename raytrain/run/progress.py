"""Live progress: rank 0 sends updates to the driver, which draws one bar per epoch.

Worker output is not forwarded to the console (``ray.init(log_to_driver=False)``
unless ``--verbose``): each worker's TensorFlow start-up noise and Ray's per-worker
lines would appear once per worker. Instead rank 0 sends what a person watching needs
to a small actor (:class:`ProgressSink`), and the driver (:class:`ProgressPrinter`)
draws it:

- on a terminal, a bar per epoch, redrawn twice a second: step/steps, ETA, loss and
  metrics, samples/s (all workers), then the epoch's line when it ends;
- elsewhere (CI, ``ray job logs``, a file), only the epoch's line: one per epoch.

Any rank may send a note (a restored checkpoint, a skipped file); the driver prints it
once, above the bar.

A ``--local`` run trains in the driver's own process and starts no Ray: its sink is a
plain :class:`ProgressSink` object, which the loop fills and the printer's thread
empties directly.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Any, Callable, Iterator, Optional, TextIO

from raytrain.env import VERBOSE_ENV

UPDATE_SECONDS = 0.5  # rank 0 sends a step update at most this often
BAR_WIDTH = 24


class ProgressSink:
    """Collects messages from the workers until the driver takes them (a Ray actor, or in
    a ``--local`` run an object of the driver's process, filled and emptied by two threads)."""

    def __init__(self) -> None:
        self._messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def put(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._messages.append(message)

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            taken, self._messages = self._messages, []
        return taken


def start_sink() -> Any:
    """A :class:`ProgressSink` actor on this node (no CPU reserved: it only holds a list)."""
    import ray

    return ray.remote(num_cpus=0)(ProgressSink).remote()


def sender(sink: Any) -> Callable[[dict[str, Any]], None]:
    """A function that sends a message to ``sink`` without waiting (None: drop messages)."""
    if sink is None:
        return lambda message: None
    if isinstance(sink, ProgressSink):
        return sink.put
    return lambda message: sink.put.remote(message)


def note(sink: Any, text: str) -> None:
    """Send one line for the driver to print (or print it, without a sink)."""
    if sink is None:
        sys.stderr.write(text + "\n")
        return
    sender(sink)({"kind": "note", "text": text})


def _clock(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds < 3600 else f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def render_bar(message: dict[str, Any]) -> str:
    """One line of progress: ``epoch 2/5 [=====>   ] 120/250 ETA 0:07 loss 0.53 ... 1,520 samples/s``."""
    step, steps = message["step"], message["steps"]
    done = int(BAR_WIDTH * step / max(steps, 1))
    bar = "=" * done + (">" if done < BAR_WIDTH else "") + " " * (BAR_WIDTH - done - 1)
    elapsed = message["elapsed_s"]
    eta = elapsed / max(step, 1) * (steps - step)
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in message["metrics"].items())
    return (f"epoch {message['epoch']}/{message['epochs']} [{bar[:BAR_WIDTH]}] {step}/{steps}  ETA {_clock(eta)}  "
            f"{metrics}  {message['samples_per_s']:,.0f} samples/s")


class ProgressPrinter:
    """Draws what the workers send, from a background thread of the driver.

    Args:
        sink: The :class:`ProgressSink` (an actor, or the object of a ``--local`` run).
        out: Where to draw (the driver's stdout).
        tty: Draw a live bar (a terminal) or only one line per epoch.
        listener: Given every message too (``put``), and asked for lines to print (``take_notes``).
    """

    def __init__(self, sink: Any, out: TextIO = sys.stdout, tty: Optional[bool] = None, poll_s: float = 0.25,
                 listener: Any = None):
        self.sink = sink
        self.listener = listener  # also gets every message, and may give lines to print (raytrain.run.tracking.RunLog)
        self.out = out
        self.tty = out.isatty() if tty is None else tty
        self.poll_s = poll_s
        self._bar = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raytrain-progress", daemon=True)

    def start(self) -> "ProgressPrinter":
        self._thread.start()
        return self

    def _clear_bar(self) -> None:
        if self._bar:
            self.out.write("\r" + " " * len(self._bar) + "\r")
            self._bar = ""

    def show(self, messages: list[dict[str, Any]]) -> None:
        """Draw ``messages`` (steps: the bar; epochs and notes: a line each)."""
        if self.listener is not None:
            for m in messages:
                self.listener.put(m)
            messages = messages + [{"kind": "note", "text": text} for text in self.listener.take_notes()]
        messages = [m for m in messages if m["kind"] in ("step", "epoch", "note")]  # "scalars" are for the listener
        steps = [m for m in messages if m["kind"] == "step"]
        for m in messages:
            if m["kind"] in ("epoch", "note"):
                self._clear_bar()
                self.out.write((m["line"] if m["kind"] == "epoch" else m["text"]) + "\n")
        if self.tty and steps and (not messages or messages[-1]["kind"] == "step"):
            line = render_bar(steps[-1])
            self.out.write("\r" + line + " " * max(0, len(self._bar) - len(line)))
            self._bar = line
        self.out.flush()

    def _take(self) -> list[dict[str, Any]]:
        if isinstance(self.sink, ProgressSink):
            return self.sink.take()
        import ray

        try:
            return ray.get(self.sink.take.remote(), timeout=10)
        except Exception:  # the run is ending: Ray may already be shutting down
            return []

    def _run(self) -> None:
        while not self._stop.is_set():
            self.show(self._take())
            self._stop.wait(self.poll_s)

    def stop(self) -> None:
        """Show what is left and end the thread (call before Ray shuts down)."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.show(self._take())
        self._clear_bar()
        self.out.flush()


def step_message(epoch: int, epochs: int, step: int, steps: int, metrics: dict[str, float], samples: int,
                 elapsed: float) -> dict[str, Any]:
    return {"kind": "step", "epoch": epoch, "epochs": epochs, "step": step, "steps": steps, "metrics": metrics,
            "samples_per_s": samples / max(elapsed, 1e-9), "elapsed_s": elapsed, "time": time.time()}


@contextlib.contextmanager
def quiet_stderr() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null for a moment (unless ``--verbose``): TensorFlow's
    C++ lines at import and device probing ("Could not find cuda drivers", "failed call to
    cuInit") are printed before its logging is configured, so no log level hides them."""
    if os.environ.get(VERBOSE_ENV):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
