"""Console output of the commands: tables that read in full at 80 columns."""

from __future__ import annotations

from rich.table import Table


def folding_table(title: str, *columns: str, right: tuple[str, ...] = ()) -> Table:
    """A table whose cells wrap instead of being cut with an ellipsis (a pipe or a narrow terminal gives 80 columns)."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column in right else "left", overflow="fold")
    return table
