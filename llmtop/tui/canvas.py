"""A tiny braille canvas for the charts (no plotting dependency; 2×4 dots per cell).

Pure rendering helpers: they take numbers and return Rich `Text` rows, so the chart widgets
stay small and the drawing is testable without a terminal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rich.text import Text

# dot (dx, dy) inside a cell, dy counted from the top → bit of U+2800
_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))


class Canvas:
    """`width` × `height` cells; dots are addressed with y = 0 at the bottom."""

    def __init__(self, width: int, height: int) -> None:
        self.width = max(width, 1)
        self.height = max(height, 1)
        self._bits = [[0] * self.width for _ in range(self.height)]
        self._style: list[list[str]] = [[""] * self.width for _ in range(self.height)]
        self._over: dict[tuple[int, int], tuple[str, str]] = {}
        self._under: dict[tuple[int, int], tuple[str, str]] = {}

    @property
    def dots_x(self) -> int:
        return self.width * 2

    @property
    def dots_y(self) -> int:
        return self.height * 4

    def dot(self, x: int, y: int, style: str) -> None:
        if not (0 <= x < self.dots_x and 0 <= y < self.dots_y):
            return
        row = self.height - 1 - y // 4
        dy = 3 - y % 4
        col = x // 2
        self._bits[row][col] |= _BITS[x % 2][dy]
        self._style[row][col] = style

    def line(self, x0: int, y0: int, x1: int, y1: int, style: str) -> None:
        """Bresenham between two dots."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.dot(x0, y0, style)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def mark(self, col: int, row: int, char: str, style: str) -> None:
        """A character in a cell, drawn over any dots (a point marker, a label)."""
        if 0 <= col < self.width and 0 <= row < self.height:
            self._over[(row, col)] = (char, style)

    def hline(self, y: int, char: str, style: str) -> None:
        """A horizontal rule at dot height `y`, shown in cells that hold no dots."""
        row = self.height - 1 - y // 4
        if 0 <= row < self.height:
            for col in range(self.width):
                self._under[(row, col)] = (char, style)

    def rows(self) -> list[Text]:
        out = []
        for r in range(self.height):
            t = Text()
            for c in range(self.width):
                over = self._over.get((r, c))
                if over is not None:
                    t.append(over[0], over[1])
                elif self._bits[r][c]:
                    t.append(chr(0x2800 + self._bits[r][c]), self._style[r][c])
                elif (r, c) in self._under:
                    ch, st = self._under[(r, c)]
                    t.append(ch, st)
                else:
                    t.append(" ")
            out.append(t)
        return out


def nice_max(value: float) -> float:
    """Round an axis maximum up to 1, 2 or 5 × 10^n, so labels stay readable."""
    if not value > 0 or math.isinf(value) or math.isnan(value):
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1.0, 2.0, 5.0, 10.0):
        if value <= m * 10**exp:
            return m * 10**exp
    return 10.0 ** (exp + 1)


def to_dot(value: float, top: float, dots: int) -> int:
    """A value on [0, top] to a dot index on [0, dots - 1] (clamped)."""
    if value is None or not math.isfinite(value) or not math.isfinite(top) or top <= 0:
        return -1
    return min(max(round(value / top * (dots - 1)), 0), dots - 1)


def plot_line(canvas: Canvas, ys: Sequence[float], top: float, style: str, x_from: int = 0) -> None:
    """One value per dot column starting at `x_from`; NaN leaves a gap."""
    prev: tuple[int, int] | None = None
    for i, v in enumerate(ys):
        x = x_from + i
        y = to_dot(v, top, canvas.dots_y)
        if y < 0:
            prev = None
            continue
        if prev is not None:
            canvas.line(prev[0], prev[1], x, y, style)
        else:
            canvas.dot(x, y, style)
        prev = (x, y)


BLOCKS = " ▁▂▃▄▅▆▇█"


def sparkline(values: Sequence[float], top: float) -> str:
    """One block character per value, scaled to `top`."""
    out = []
    for v in values:
        # closed loop offers an infinite rate; None/NaN/inf are gaps, never a crash
        if v is None or not math.isfinite(v) or not math.isfinite(top) or top <= 0:
            out.append(" ")
        else:
            out.append(BLOCKS[min(max(round(v / top * 8), 0), 8)])
    return "".join(out)


LABEL_W = 7


def labelled(rows: list[Text], top: str, name: str, style: str) -> list[Text]:
    """Prefix plot rows with a narrow label column: the scale's top, then the series name."""
    labels = [""] * len(rows)
    if rows:
        labels[0] = top
        labels[-1] = name if len(rows) > 1 else f"{name} {top}"
    out = []
    for lab, row in zip(labels, rows, strict=True):
        t = Text(lab[: LABEL_W - 1].rjust(LABEL_W - 1) + " ", style)
        t.append_text(row)
        out.append(t)
    return out
