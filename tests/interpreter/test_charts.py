"""Chart data for each matplotlib chart kind, parsed by the official SDK's own chart models."""

from __future__ import annotations

import base64
from typing import Any

from e2b_code_interpreter.charts import (
    BarChart,
    BoxAndWhiskerChart,
    LineChart,
    PieChart,
    ScaleType,
    ScatterChart,
    SuperChart,
)

PLT = "import matplotlib.pyplot as plt\n"


def _figure(sandbox: Any, code: str) -> Any:
    """The one figure ``code`` shows: a PNG next to its chart."""
    execution = sandbox.run_code(PLT + code + "\nplt.show()")
    assert execution.error is None, execution.error
    (result,) = execution.results
    assert base64.b64decode(result.png).startswith(b"\x89PNG")
    assert not result.is_main_result and "chart" in result.formats()
    return result.chart


def test_line_chart(sandbox: Any) -> None:
    chart = _figure(
        sandbox,
        "plt.plot([1, 2, 3], [3, 1, 2], label='speed')\nplt.plot([1, 2], [0, 5])\n"
        "plt.title('Runs'); plt.xlabel('Time (s)'); plt.ylabel('Distance [km]')",
    )
    assert isinstance(chart, LineChart) and chart.type == "line" and chart.title == "Runs"
    assert (chart.x_label, chart.x_unit, chart.y_label, chart.y_unit) == (
        "Time (s)", "s", "Distance [km]", "km",
    )  # fmt: skip
    assert chart.x_scale == ScaleType.LINEAR and chart.y_scale == ScaleType.LINEAR
    assert len(chart.x_ticks) == len(chart.x_tick_labels) > 0
    assert all(isinstance(t, float) for t in chart.x_ticks)
    speed, unnamed = chart.elements
    assert (speed.label, speed.points) == ("speed", [(1.0, 3.0), (2.0, 1.0), (3.0, 2.0)])
    assert (unnamed.label, unnamed.points) == ("", [(1.0, 0.0), (2.0, 5.0)])


def test_line_chart_with_dates_and_a_log_scale(sandbox: Any) -> None:
    chart = _figure(
        sandbox,
        "import datetime as dt\n"
        "plt.plot([dt.date(2024, 1, 1), dt.date(2024, 1, 3)], [10, 1000]); plt.yscale('log')",
    )
    assert isinstance(chart, LineChart)
    assert chart.x_scale == ScaleType.DATETIME and chart.y_scale == ScaleType.LOG
    assert chart.elements[0].points == [
        ("2024-01-01T00:00:00+00:00", 10.0),
        ("2024-01-03T00:00:00+00:00", 1000.0),
    ]
    assert all(isinstance(t, str) and t.startswith("2024-01-") for t in chart.x_ticks)


def test_scatter_chart(sandbox: Any) -> None:
    chart = _figure(sandbox, "plt.scatter([1, 2, 3], [4, 5, 6], label='dots')")
    assert isinstance(chart, ScatterChart) and chart.type == "scatter"
    assert [(e.label, e.points) for e in chart.elements] == [
        ("dots", [(1.0, 4.0), (2.0, 5.0), (3.0, 6.0)])
    ]


def test_bar_chart(sandbox: Any) -> None:
    chart = _figure(
        sandbox,
        "plt.bar(['apples', 'pears'], [3, 5], label='2024')\nplt.title('Fruit')\n"
        "plt.ylabel('Count (pcs)')",
    )
    assert isinstance(chart, BarChart) and chart.title == "Fruit" and chart.y_unit == "pcs"
    assert [(e.label, e.group, e.value) for e in chart.elements] == [
        ("apples", "2024", 3.0),
        ("pears", "2024", 5.0),
    ]


def test_pie_chart(sandbox: Any) -> None:
    chart = _figure(sandbox, "plt.pie([1, 3], labels=['small', 'big']); plt.title('Share')")
    assert isinstance(chart, PieChart) and chart.title == "Share"
    assert [(e.label, e.angle, e.radius) for e in chart.elements] == [
        ("small", 90.0, 1.0),
        ("big", 270.0, 1.0),
    ]


def test_box_and_whisker_chart(sandbox: Any) -> None:
    chart = _figure(
        sandbox,
        "plt.boxplot([[1, 2, 3, 4, 5, 40], [2, 3, 4]], tick_labels=['A', 'B'])\n"
        "plt.ylabel('Score')",
    )
    assert isinstance(chart, BoxAndWhiskerChart) and chart.y_label == "Score"
    a, b = chart.elements
    assert (a.label, a.min, a.first_quartile, a.median, a.third_quartile, a.max, a.outliers) == (
        "A", 1.0, 2.25, 3.5, 4.75, 5.0, [40.0],
    )  # fmt: skip
    assert (b.label, b.median, b.outliers) == ("B", 3.0, [])


def test_a_figure_of_several_charts_is_a_superchart(sandbox: Any) -> None:
    chart = _figure(
        sandbox,
        "fig, (left, right) = plt.subplots(1, 2)\nfig.suptitle('Both')\n"
        "left.plot([1, 2], [2, 1]); left.set_title('L')\nright.pie([1, 1])",
    )
    assert isinstance(chart, SuperChart) and chart.title == "Both"
    line, pie = chart.elements
    assert isinstance(line, LineChart) and line.title == "L"
    assert isinstance(pie, PieChart) and len(pie.elements) == 2


def test_a_figure_as_the_cells_value_and_a_plot_without_chart_data(sandbox: Any) -> None:
    execution = sandbox.run_code(
        PLT + "fig, ax = plt.subplots()\nax.plot([0, 1], [1, 0])\nplt.close(fig)\nfig"
    )
    (main,) = execution.results
    assert main.is_main_result and isinstance(main.chart, LineChart)
    image = sandbox.run_code(PLT + "plt.imshow([[0, 1], [1, 0]]); plt.show()")
    (result,) = image.results
    assert result.png and result.chart is None and "chart" not in result.formats()
