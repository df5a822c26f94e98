"""vtempo: video action recognition with temporal-module CNNs.

    import vtempo
    rec = vtempo.load("tsm-demo")
    rec.classify("clip.mp4")

The names below are imported on first use, so `import vtempo` (and `vtempo --version`) stays quick.
"""
from __future__ import annotations


def _end_start_up_on_ctrl_c():
    """In the `vtempo` program (and `python -m vtempo`), a Ctrl-C before its command starts ends it at
    once with 130 and the one line "interrupted", whatever is importing: an exception raised there
    could meet an import that turns it into another error (numpy makes it an ImportError) or a
    traceback, and nothing has been written yet. The command line (`vtempo.cli.app`) hands SIGINT back
    as it starts. Returns the handler there was, or None in a program that imports vtempo."""
    import os
    import signal
    import sys

    argv = list(getattr(sys, "orig_argv", ()))
    as_module = sys.argv[0] == "-m" and any(
        word in ("-mvtempo", "-mvtempo.cli") or (word == "-m" and argv[at + 1:at + 2] in (["vtempo"], ["vtempo.cli"]))
        for at, word in enumerate(argv))
    # the script as Python was started with it (a process multiprocessing spawns is given the parent's argv)
    as_script = os.path.splitext(os.path.basename(sys.argv[0]))[0] in ("vtempo", "vtempo-script") and sys.argv[0] in argv
    if not (as_module or as_script):
        return None

    def interrupted(signum, frame):
        try:
            os.write(2, b"interrupted\n")
        finally:
            os._exit(130)

    try:
        return signal.signal(signal.SIGINT, interrupted)
    except ValueError:  # not the main thread
        return None


_sigint_before_start_up = _end_start_up_on_ctrl_c()


def _start_up_done() -> None:
    """The command starts: Ctrl-C is a KeyboardInterrupt again (`_interrupt_once_torch_is_imported`), or
    what it was before (ignored, say)."""
    global _sigint_before_start_up
    if _sigint_before_start_up is not None:
        import signal

        before, _sigint_before_start_up = _sigint_before_start_up, None
        signal.signal(signal.SIGINT, _interrupt_once_torch_is_imported if before is signal.default_int_handler
                      else before)


_interrupt_waiting = False


def _interrupt_once_torch_is_imported(signum, frame):
    """KeyboardInterrupt, as Python's own handler raises it, except while torch imports: an exception
    raised as its C++ start-up calls back into Python ends the process ("terminate called after throwing
    an instance of 'pybind11::error_already_set'"). Then the interrupt comes as the import has finished."""
    global _interrupt_waiting
    import sys

    spec = getattr(sys.modules.get("torch"), "__spec__", None)
    if not getattr(spec, "_initializing", False):
        raise KeyboardInterrupt
    if _interrupt_waiting:
        return
    _interrupt_waiting = True
    import os
    import signal
    import threading
    import time

    def when_imported():
        global _interrupt_waiting
        while getattr(spec, "_initializing", False):
            time.sleep(0.02)
        _interrupt_waiting = False
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=when_imported, name="vtempo-interrupt", daemon=True).start()


# OpenCV before torch: with torch's libraries loaded first, OpenCV's FFmpeg never opens a udp:// stream.
import cv2  # noqa: F401,I001

__version__ = "0.1.0"

_EXPORTS = {
    "load": "vtempo.inference.recognizer",
    "Recognizer": "vtempo.inference.recognizer",
    "create_model": "vtempo.inference.recognizer",
    "list_models": "vtempo.inference.recognizer",
    "Prediction": "vtempo.inference.results",
    "VideoResult": "vtempo.inference.results",
    "get_entry": "vtempo.weights.registry",
    "load_registry": "vtempo.weights.registry",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vtempo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
