"""Keeps native start-up noise, and the panics of codecs, off the console.

TensorFlow's C++ core and abseil print lines such as `I0000 00:00:... port.cc:153]
oneDNN custom operations are on` and `E0000 ... failed call to cuInit` straight to file
descriptor 2, in this process and in every Beam worker it starts, before any Python
logging setting can reach them. Unless `--verbose`, the CLI routes descriptor 2 through
a pipe that drops those lines and passes everything else on unchanged.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading

NATIVE_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] "  # absl/glog: I0000 00:00:1796148537.024626   31098 port.cc:153]
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|To enable the following instructions: .* rebuild TensorFlow"
    rb"|WARNING:absl:Tensorflow version \S+ found\. Note that TFMA support for TF 2\.0 is currently in beta)")
_installed = False


# A Rust codec's panic (pylibjpeg-rle on corrupt data): its header, its message, with
# RUST_BACKTRACE set a backtrace, and a closing note. The file is rejected with a reason
# (decode_error); the panic's own lines are not the user's business.
PANIC_START = re.compile(rb"^thread '.*' panicked at ")
PANIC_BODY = re.compile(rb"^(?:stack backtrace:|\s*\d+: |\s+at |note: )")


class NativeNoise:
    """Which lines of fd 2 to keep: not TensorFlow's and abseil's start-up lines, nor the
    lines of a codec's panic (a block from its header, and the empty line Rust writes
    before it, to its closing note)."""

    def __init__(self) -> None:
        self.panic = 0  # lines into a panic block; 0: outside one
        self.blank = False  # an empty line held back: it may open a panic

    def keep(self, lines: list[bytes]) -> list[bytes]:
        kept = []
        for line in lines:
            if PANIC_START.match(line):
                self.panic, self.blank = 1, False
                continue
            if self.blank:
                kept.append(b"")
                self.blank = False
            if self.panic:
                self.panic += 1
                if self.panic == 2 or PANIC_BODY.match(line):  # the message, then the backtrace
                    self.panic = 0 if line.startswith(b"note: ") else self.panic
                    continue
                self.panic = 0  # not a panic's line after all: shown
            if not line:
                self.blank = True
            elif not is_native_noise(line):
                kept.append(line)
        return kept


def is_native_noise(line: bytes) -> bool:
    return NATIVE_LINE.match(line) is not None


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def filter_native_logs() -> None:
    """Routes fd 2 (this process and its children) through a filter thread; once per process."""
    global _installed
    if _installed:
        return
    _installed = True
    read_end, write_end = os.pipe()
    original = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        noise = NativeNoise()
        with os.fdopen(read_end, "rb", buffering=0) as source:
            while chunk := source.read(1 << 16):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                _write_all(original, b"".join(line + b"\n" for line in noise.keep(lines)))
        held = b"\n" if noise.blank else b""  # an empty line that opened no panic
        _write_all(original, held + b"".join(noise.keep([pending]) if pending else []))

    thread = threading.Thread(target=pump, name="medseq-stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        os.dup2(original, 2)  # closes this process's write end: the pump drains and ends
        thread.join(timeout=2.0)

    atexit.register(restore)


class BeamJobMessages:
    """A filter for the root logger, where Beam's portable runner logs the messages of
    its job service (an error there is a runner's traceback, many lines): kept off the
    console unless `--verbose`; the last error's final line is kept for the one-line
    error the stage then raises."""

    last_error = ""

    def filter(self, record: logging.LogRecord) -> bool:
        if "apache_beam" not in record.pathname:
            return True
        if record.levelno >= 40:
            lines = [line.strip() for line in record.getMessage().splitlines() if line.strip()]
            if lines:
                BeamJobMessages.last_error = lines[-1][:300]
        return False


def quiet_beam_job_threads() -> None:
    """Beam's portable runner reads its job's messages in a thread that dies with a gRPC
    traceback when the job service drops the stream; the stage reports the failure in
    one line instead. Other threads' errors still print."""
    import threading

    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name.startswith("wait_until_finish"):
            return
        previous(args)

    threading.excepthook = hook
