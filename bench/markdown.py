"""Markdown formatting shared by the report's sections: numbers, tables, figure links."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

PLOTS = "plots"  # the figures' folder beside report.md, which links them by this relative path


def num(x, fmt: str = "{:.2f}") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, (float, np.floating)) and math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return fmt.format(x)


def table(df: pd.DataFrame) -> str:
    return df.to_markdown(index=False, disable_numparse=True)


def image(figures: dict[str, Path], name: str, alt: str) -> str:
    return f"![{alt}]({PLOTS}/{figures[name].name})"


def text(value) -> str:
    """A text cell of a table read back from CSV, where an empty string became NaN."""
    return value if isinstance(value, str) else ""
