"""`medseq push`: a blessed model becomes the next integer version for TF Serving."""

from __future__ import annotations

from medseq.components.push.executor import PushOutputs, push, served_model

__all__ = ["PushOutputs", "push", "served_model"]
