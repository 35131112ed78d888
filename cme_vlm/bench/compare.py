"""The project's bench rows beside the peer's on the same card: ``python -m cme_vlm.bench.compare BENCH_JSON PEER_TXT``.

``PEER_TXT`` holds the ``RESULT {json}`` lines of the peer scripts (TRL's trainers: ``stage``,
``tokens_per_s``; transformers ``generate``: ``batch``, ``gen_tokens_per_s``, ``seconds``). Rows
missing on either side (a time limit, a failure) are shown as missing, never guessed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

RESULT = "RESULT "


def peer_results(path: Path) -> list[dict[str, Any]]:
    """The peer's measurements, one per ``RESULT`` line (other lines and a torn last line are skipped)."""
    if not path.is_file():
        return []
    results = []
    for line in path.read_text().splitlines():
        if line.startswith(RESULT):
            try:
                results.append(json.loads(line[len(RESULT):]))
            except json.JSONDecodeError:
                continue
    return results


def comparison(report: dict[str, Any], peer: list[dict[str, Any]]) -> list[tuple[str, float | None, float | None]]:
    """``(what, project, peer)`` per measure either side has: training and generated tokens/s, and seconds of one
    explain answer."""
    ours = {r["row"]: r for r in report.get("rows", []) if r.get("status") == "ok"}
    trained = {p["stage"]: p for p in peer if "stage" in p}
    generated = {p["batch"]: p for p in peer if "batch" in p}
    lines: list[tuple[str, float | None, float | None]] = []
    for stage in ("sft", "dpo"):
        lines.append((f"{stage} tokens/s", ours.get(stage, {}).get("tokens_per_s"),
                      trained.get(stage, {}).get("tokens_per_s")))
    explain = ours.get("explain bs=1 (greedy)", {})
    lines.append(("explain bs=1 seconds (lower is better)", explain.get("step_time_s"), generated.get(1, {}).get("seconds")))
    sizes = sorted({int(name.split("=")[1]) for name in ours if name.startswith("generate bs=")} | set(generated))
    for n in sizes:
        lines.append((f"generate bs={n} tokens/s", ours.get(f"generate bs={n}", {}).get("tokens_per_s"),
                      generated.get(n, {}).get("gen_tokens_per_s")))
    return [line for line in lines if line[1] is not None or line[2] is not None]


def table(lines: list[tuple[str, float | None, float | None]]) -> str:
    """A plain-text table with the ratio project / peer (for seconds, peer / project: above 1 means faster)."""
    def text(value: float | None) -> str:
        return "missing" if value is None else f"{value:,.2f}"

    rows = [f"{'measure':<40} {'project':>12} {'peer':>12} {'speed-up':>9}"]
    for what, ours, peer in lines:
        ratio = "-"
        if ours and peer:
            ratio = f"{(peer / ours if 'seconds' in what else ours / peer):.2f}x"
        rows.append(f"{what:<40} {text(ours):>12} {text(peer):>12} {ratio:>9}")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.splitlines()[0], file=sys.stderr)
        return 2
    bench = Path(argv[0])
    report = json.loads(bench.read_text()) if bench.is_file() else {}
    print(f"project ({report.get('device', 'no bench.json')}) beside the peer on the same card:")
    print(table(comparison(report, peer_results(Path(argv[1])))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
