"""Plain-text tables: the layout every practise-df command and report prints."""
from __future__ import annotations

from typing import Sequence


def format_table(rows: Sequence[Sequence], header: Sequence[str]) -> str:
    """Left-aligned columns under a dashed rule; floats shown with 4 significant digits."""
    cells = [[str(c) for c in header]] + [[f'{c:.4g}' if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, '  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def format_interval(entry: dict) -> str:
    """'LOW to HIGH%': the 95% interval of a saving (``saved_low``/``saved_high``), or 'n/a' without one
    (too few runs, or a file of an older version)."""
    return 'n/a' if entry.get('saved_low') is None else f"{entry['saved_low']:.1f} to {entry['saved_high']:.1f}%"
