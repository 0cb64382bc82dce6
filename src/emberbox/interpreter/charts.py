"""A matplotlib figure's data as the chart JSON the SDKs parse (runs inside Python kernels).

The shape is the one ``e2b_code_interpreter.charts`` deserialises: every chart has ``type``,
``title`` and ``elements``; 2-D charts add ``x_label``/``y_label``/``x_unit``/``y_unit``; line
and scatter charts add ticks, tick labels and scales per axis, and elements of
``{label, points: [[x, y], ...]}``; bar elements are ``{label, group, value}``; pie elements
``{label, angle, radius}``; box-and-whisker elements ``{label, min, first_quartile, median,
third_quartile, max, outliers}``; a figure of several charts is a ``superchart`` whose
elements are charts. Anything else (images, contour plots, empty axes) gives no chart.

Box plots leave no trace an axes can be asked about (their artists are anonymous lines), so
:func:`record_boxplots` wraps ``Axes.bxp`` to keep the statistics it drew on the axes.
Values are plain JSON: numpy scalars become floats, NaN and infinities become null, dates
ISO 8601 strings, categories their names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

Chart = dict[str, Any]
BOXES_ATTR = "_emberbox_boxes"
_UNIT = re.compile(r"[(\[]\s*([^()\[\]]+?)\s*[)\]]\s*$")


def figure_chart(figure: Any) -> Chart | None:
    """The figure's chart, a superchart for several charts, or None if nothing is recognised."""
    axes = [ax for ax in figure.get_axes() if _has_data(ax)]
    suptitle = getattr(figure, "_suptitle", None)
    title = (suptitle.get_text() if suptitle is not None else "") or None
    if len(axes) == 1:
        chart = axes_chart(axes[0])
        if chart is not None and not chart["title"]:
            chart["title"] = title  # one chart: the figure's title is its title
        return chart
    charts = [chart for chart in map(axes_chart, axes) if chart is not None]
    return {"type": "superchart", "title": title, "elements": charts} if charts else None


def axes_chart(ax: Any) -> Chart | None:
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.patches import Wedge

    boxes = getattr(ax, BOXES_ATTR, None)
    if boxes:
        return _box_chart(ax, boxes)
    wedges = [p for p in ax.patches if isinstance(p, Wedge)]
    if wedges:
        return _pie_chart(ax, wedges)
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    if bars:
        return _bar_chart(ax, bars)
    lines = [line for line in ax.get_lines() if len(line.get_xydata())]
    if lines:
        return _point_chart(ax, "line", [(ln.get_label(), ln.get_xydata()) for ln in lines])
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    if scatters:
        points = [(str(c.get_label()), c.get_offsets()) for c in scatters]
        return _point_chart(ax, "scatter", points)
    return None


# -- the chart kinds ---------------------------------------------------------------------------


def _point_chart(ax: Any, kind: str, series: Sequence[tuple[str, Any]]) -> Chart:
    to_x, to_y = _values(ax.xaxis), _values(ax.yaxis)
    elements = [
        {"label": _label(label), "points": [[to_x(x), to_y(y)] for x, y in _pairs(data)]}
        for label, data in series
    ]
    return {
        "type": kind,
        **_chart2d(ax),
        "x_ticks": [to_x(t) for t in ax.get_xticks()],
        "x_tick_labels": [t.get_text() for t in ax.get_xticklabels()],
        "x_scale": _scale(ax.xaxis),
        "y_ticks": [to_y(t) for t in ax.get_yticks()],
        "y_tick_labels": [t.get_text() for t in ax.get_yticklabels()],
        "y_scale": _scale(ax.yaxis),
        "elements": elements,
    }


def _bar_chart(ax: Any, containers: Sequence[Any]) -> Chart:
    elements = []
    for container in containers:
        horizontal = getattr(container, "orientation", "vertical") == "horizontal"
        axis = ax.yaxis if horizontal else ax.xaxis
        names = _tick_names(axis)
        for rect, value in zip(container.patches, container.datavalues, strict=False):
            if horizontal:
                where = rect.get_y() + rect.get_height() / 2
            else:
                where = rect.get_x() + rect.get_width() / 2
            elements.append(
                {
                    "label": _name_at(names, where),
                    "group": _label(container.get_label()),
                    "value": _number(value),
                }
            )
    return {"type": "bar", **_chart2d(ax), "elements": elements}


def _pie_chart(ax: Any, wedges: Sequence[Any]) -> Chart:
    elements = [
        {
            "label": _label(w.get_label()),
            "angle": _number(abs(w.theta2 - w.theta1)),
            "radius": _number(w.r),
        }
        for w in wedges
    ]
    return {"type": "pie", "title": _title(ax), "elements": elements}


def _box_chart(ax: Any, boxes: Sequence[tuple[dict[str, Any], float, bool]]) -> Chart:
    elements = []
    for stats, position, horizontal in boxes:
        label = stats.get("label")
        if label is None:
            label = _name_at(_tick_names(ax.yaxis if horizontal else ax.xaxis), position)
        elements.append(
            {
                "label": str(label),
                "min": _number(stats["whislo"]),
                "first_quartile": _number(stats["q1"]),
                "median": _number(stats["med"]),
                "third_quartile": _number(stats["q3"]),
                "max": _number(stats["whishi"]),
                "outliers": [_number(v) for v in stats.get("fliers", [])],
            }
        )
    return {"type": "box_and_whisker", **_chart2d(ax), "elements": elements}


def record_boxplots(axes_class: Any) -> None:
    """Wrap ``axes_class.bxp`` so each axes keeps ``(stats, position, horizontal)`` per box."""
    original = axes_class.bxp
    if getattr(original, "_emberbox", False):
        return

    def bxp(self: Any, bxpstats: Any, positions: Any = None, *args: Any, **kwargs: Any) -> Any:
        result = original(self, bxpstats, positions, *args, **kwargs)
        try:
            stats = list(bxpstats)
            where = list(positions) if positions is not None else range(1, len(stats) + 1)
            horizontal = kwargs.get("orientation") == "horizontal" or kwargs.get("vert") is False
            boxes = getattr(self, BOXES_ATTR, [])
            boxes.extend(
                (dict(s), float(p), horizontal) for s, p in zip(stats, where, strict=False)
            )
            setattr(self, BOXES_ATTR, boxes)
        except Exception:  # never break the user's plot for the sake of its chart data
            pass
        return result

    bxp._emberbox = True  # type: ignore[attr-defined]
    axes_class.bxp = bxp


# -- axes facts --------------------------------------------------------------------------------


def _has_data(ax: Any) -> bool:
    return bool(ax.lines or ax.patches or ax.collections or getattr(ax, BOXES_ATTR, None))


def _title(ax: Any) -> str | None:
    return ax.get_title() or None


def _chart2d(ax: Any) -> Chart:
    x_label, y_label = ax.get_xlabel() or None, ax.get_ylabel() or None
    return {
        "title": _title(ax),
        "x_label": x_label,
        "y_label": y_label,
        "x_unit": _unit(x_label),
        "y_unit": _unit(y_label),
    }


def _unit(label: str | None) -> str | None:
    """'Distance (km)' or 'Distance [km]' → 'km'."""
    found = _UNIT.search(label or "")
    return found.group(1) if found else None


def _label(label: Any) -> str:
    """Artists without a user-given label are named ``_child0`` etc. by matplotlib."""
    text = str(label) if label is not None else ""
    return "" if text.startswith("_") else text


def _converter_kind(axis: Any) -> str | None:
    getter = getattr(axis, "get_converter", None)
    converter = getter() if getter else getattr(axis, "converter", None)
    module = type(converter).__module__ if converter is not None else ""
    if module.startswith("matplotlib.dates"):
        return "datetime"
    if module.startswith("matplotlib.category"):
        return "categorical"
    return None


def _scale(axis: Any) -> str:
    return _converter_kind(axis) or str(axis.get_scale())


def _categories(axis: Any) -> dict[float, str]:
    mapping = getattr(axis.get_units(), "_mapping", None) or {}
    return {float(v): str(k) for k, v in mapping.items()}


def _values(axis: Any) -> Callable[[Any], Any]:
    """How a plotted coordinate on ``axis`` is written: a date, a category name or a number."""
    kind = _converter_kind(axis)
    if kind == "datetime":
        from matplotlib.dates import num2date

        def as_date(value: Any) -> Any:
            number = _number(value)
            return None if number is None else num2date(number).isoformat()  # type: ignore[no-untyped-call]

        return as_date
    if kind == "categorical":
        names = _categories(axis)
        return lambda value: names.get(float(value), _number(value))
    return _number


def _tick_names(axis: Any) -> list[tuple[float, str]]:
    """(position, label) of each tick, categories preferred: bars and boxes sit on ticks."""
    names = _categories(axis)
    if names:
        return sorted(names.items())
    labels = [t.get_text() for t in axis.get_ticklabels()]
    return [(float(loc), text) for loc, text in zip(axis.get_ticklocs(), labels, strict=False)]


def _name_at(names: Sequence[tuple[float, str]], where: float) -> str:
    for position, text in names:
        if abs(position - where) < 1e-6 and text:
            return text
    number = _number(where)
    if number is None:
        return ""
    return str(int(number)) if float(number).is_integer() else str(number)


def _pairs(data: Any) -> list[tuple[Any, Any]]:
    return [(row[0], row[1]) for row in data]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
