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
