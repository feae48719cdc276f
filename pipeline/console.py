"""Keeps native start-up noise off the console.

TensorFlow's C++ core and abseil print lines such as `I0000 00:00:... port.cc:153]
oneDNN custom operations are on` and `E0000 ... failed call to cuInit` straight to file
descriptor 2, in this process and in every Beam worker it starts, before any Python
logging setting can reach them. Unless `--verbose`, the CLI routes descriptor 2 through
a pipe that drops those lines and passes everything else on unchanged.
"""

from __future__ import annotations

import atexit
import os
import re
import threading

NATIVE_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] "  # absl/glog: I0000 00:00:1796148537.024626   31098 port.cc:153]
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|To enable the following instructions: .* rebuild TensorFlow"
    rb"|WARNING:absl:Tensorflow version \S+ found\. Note that TFMA support for TF 2\.0 is currently in beta)")
_installed = False


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
        with os.fdopen(read_end, "rb", buffering=0) as source:
            while chunk := source.read(1 << 16):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                kept = b"".join(line + b"\n" for line in lines if not is_native_noise(line))
                _write_all(original, kept)
        if not is_native_noise(pending):
            _write_all(original, pending)

    thread = threading.Thread(target=pump, name="medseq-stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        os.dup2(original, 2)  # closes this process's write end: the pump drains and ends
        thread.join(timeout=2.0)

    atexit.register(restore)
