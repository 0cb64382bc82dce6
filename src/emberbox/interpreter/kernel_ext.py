"""IPython extension every Python context loads (``--ext``): matplotlib figures also display
as ``e2b/chart``, the chart data of :mod:`.charts`, which the service sends as a result's
``chart`` next to its PNG.

Loading it costs nothing up front: ``Figure`` gains its ``_repr_e2b_chart_`` method, and
``Axes`` its box-plot recording, when matplotlib first imports those modules, so a kernel that
never plots never imports matplotlib. (A method, not a printer registered for ``Figure``: the
inline backend removes every formatter's ``Figure`` printer when it sets its image formats.)
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

CHART_MIME = "e2b/chart"
PRINT_METHOD = "_repr_e2b_chart_"


def load_ipython_extension(ipython: Any) -> None:
    from IPython.core.formatters import BaseFormatter
    from traitlets import ObjectName, Unicode

    class ChartFormatter(BaseFormatter):
        format_type = Unicode(CHART_MIME)
        _return_type = (dict,)
        print_method = ObjectName(PRINT_METHOD)

    ipython.display_formatter.formatters[CHART_MIME] = ChartFormatter(
        parent=ipython.display_formatter
    )
    for name in list(_PATCHES):
        if name in sys.modules:
            _PATCHES.pop(name)(sys.modules[name])
    if _PATCHES and not any(isinstance(f, _PatchingFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchingFinder())


def _chart_or_none(figure: Any) -> dict[str, Any] | None:
    """A figure's chart; a figure we cannot read still shows its PNG."""
    from .charts import figure_chart

    try:
        return figure_chart(figure)
    except Exception:
        return None


def _add_chart_method(module: ModuleType) -> None:
    setattr(module.Figure, PRINT_METHOD, _chart_or_none)


def _record_boxplots(module: ModuleType) -> None:
    from .charts import record_boxplots

    record_boxplots(module.Axes)


# Module → what to do to it once it is loaded (each entry is used once).
_PATCHES: dict[str, Callable[[ModuleType], None]] = {
    "matplotlib.figure": _add_chart_method,
    "matplotlib.axes._axes": _record_boxplots,
}


class _PatchingFinder(importlib.abc.MetaPathFinder):
    """Finds a module of :data:`_PATCHES` with the usual finder, then patches it once loaded."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        patch = _PATCHES.pop(fullname, None)
        if patch is None:
            return None
        if not _PATCHES:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch  # type: ignore[method-assign]
        return spec
