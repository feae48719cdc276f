"""pydicom's reading settings, scoped to medseq's own reads.

pydicom's value warnings and error logs quote header values (dates, names) and would
carry them into worker logs. While medseq reads a file, `quiet_pydicom` sets pydicom's
`reading_validation_mode` to IGNORE, keeps its warnings from showing and drops its log
records; every problem pydicom would report surfaces instead as a `Rejected` reason
written by medseq. Outside such a read pydicom is as its user set it: importing medseq
changes nothing (tests/test_import_side_effects.py).

The scope is process-wide while any thread of the process is inside it (pydicom's
settings are one global), counted so that nested and concurrent reads restore the
settings only when the last one leaves.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import pydicom.config

_F = TypeVar("_F", bound=Callable[..., Any])
_lock = threading.Lock()
_state: dict[str, Any] = {"depth": 0, "mode": None, "warnings": None}


class _DropWhileReading(logging.Filter):
    """On pydicom's logger: drops its records while medseq reads, passes them otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return _state["depth"] == 0


_FILTER = _DropWhileReading()


def _enter() -> None:
    with _lock:
        if _state["depth"] == 0:
            settings = pydicom.config.settings
            _state["mode"] = settings.reading_validation_mode
            settings.reading_validation_mode = pydicom.config.IGNORE
            logger = logging.getLogger("pydicom")
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)  # a no-op outside medseq's reads
            caught = warnings.catch_warnings()
            caught.__enter__()
            warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
            _state["warnings"] = caught
        _state["depth"] += 1


def _leave() -> None:
    with _lock:
        _state["depth"] -= 1
        if _state["depth"] == 0:
            pydicom.config.settings.reading_validation_mode = _state["mode"]
            _state["warnings"].__exit__(None, None, None)
            _state["warnings"] = None


def quiet_pydicom(func: _F) -> _F:
    """Runs `func` inside the scope: pydicom quiet and lenient while it reads."""

    @wraps(func)
    def scoped(*args: Any, **kwargs: Any) -> Any:
        _enter()
        try:
            return func(*args, **kwargs)
        finally:
            _leave()

    return scoped  # type: ignore[return-value]
