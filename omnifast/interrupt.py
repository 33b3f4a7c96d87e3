"""Ctrl-C as a stop request: the long loops (a fit's steps, fit_many's wait for its fits)
check an event instead of being torn down by a KeyboardInterrupt wherever one lands."""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def ctrl_c_sets(event: threading.Event):
    """While inside, the first Ctrl-C sets ``event`` (and nothing else); a second one raises
    KeyboardInterrupt at once, as the handler before it does. The handler is restored on
    exit. Off the main thread, where Python delivers no signal, this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        event.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
