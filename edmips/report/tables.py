"""The report's tables as text: Markdown, CSV, and how a cell is shown."""

import csv
from pathlib import Path


def markdown_table(columns, rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt(c, row[c]) for c in columns]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, columns, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: "" if row[k] is None else row[k] for k in columns} for row in rows)


def fmt(column: str, value) -> str:
    """A cell as shown in the Markdown and terminal tables."""
    if value is None:  # not recorded (an older file) or not measured
        return "-"
    if column in ("bitops", "weight_bits", "activation_bits", "micronet_score", "latency_ms"):
        return f"{value:.4g}"
    if column == "runs":
        return str(value)
    if column == "wall_time_s":
        return f"{value:.0f}"
    if isinstance(value, float):
        return f"{value:.3f}" if column == "equivalent_bits" else f"{value:.4f}"
    return str(value)
