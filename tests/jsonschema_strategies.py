"""``from_schema`` (hypothesis-jsonschema), made to work with the installed Hypothesis.

hypothesis-jsonschema 0.23.1 (the latest release) generates objects with a private Hypothesis
helper, ``hypothesis.internal.conjecture.utils.many``, through the old API
``elements = many(...); while elements.more(): ...``. Newer Hypothesis (6.170 is installed) made
``many`` a context manager iterated with ``for _ in elements``, so every object schema fails with
``AttributeError: 'many' object has no attribute 'more'``. The adapter below gives
hypothesis-jsonschema the old API on top of the new one, only inside hypothesis-jsonschema's
module and only when the installed ``many`` lacks ``more``; once either side is fixed it steps
aside by itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import hypothesis_jsonschema._from_schema as _hjs
from hypothesis.internal.conjecture import utils as _cu
from hypothesis_jsonschema import from_schema

__all__ = ["from_schema"]

_STOP = object()


class _ManyWithMore:
    """``many`` as hypothesis-jsonschema calls it: ``more()`` and ``reject()``."""

    def __init__(self, data: Any, **kwargs: Any) -> None:
        self._many = _cu.many(data, **kwargs)
        self._many.__enter__()
        self._elements: Iterator[None] = iter(self._many)

    def more(self) -> bool:
        if next(self._elements, _STOP) is _STOP:
            self._many.__exit__(None, None, None)
            return False
        return True

    def reject(self, why: str | None = None) -> None:
        self._many.reject(why)


class _ConjectureUtils:
    """Stands in for the ``cu`` module inside hypothesis-jsonschema; all else passes through."""

    many = _ManyWithMore

    def __getattr__(self, name: str) -> Any:
        return getattr(_cu, name)


if not hasattr(_cu.many, "more"):
    _hjs.__dict__["cu"] = _ConjectureUtils()  # the module global its from_object_schema reads
