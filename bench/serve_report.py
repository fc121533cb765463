"""bench/serve.py's tables and targets.

Why apart: serve.py reads as requests -> runs -> checks; how its rows are printed and judged is a detail.
"""

from __future__ import annotations

COLUMNS = [  # (header, key, format)
    ("c", "concurrency", "{}"),
    ("setting", "setting", "{}"),
    ("wall s", "wall_s", "{:.1f}"),
    ("tok/s", "tokens_per_s", "{:.0f}"),
    ("passes", "passes", "{}"),
    ("ideal", "ideal_passes", "{:.0f}"),
    ("meas/ideal", "passes_over_ideal", "{:.3f}"),
    ("accel", "acceleration_factor", "{:.2f}"),
    ("x k=1", "throughput_vs_k1", "{:.2f}"),
    ("fwd bound", "forward_bound_vs_k1", "{:.2f}"),
    ("q/pass", "query_tokens_per_pass", "{:.1f}"),
    ("KV rows", "peak_kv_rows", "{}"),
    ("KV entries", "peak_kv_entries", "{}"),
    ("KV cols 1st/2nd half", "kv_columns_halves", "{0[0]}/{0[1]}"),
]
PACKING = ("static k=2", "static k=3", "confadapt 0.9", "selfspec", "ours k=1")
ADAPTIVE = ("confadapt 0.9", "selfspec")


def _cell(row, key, fmt) -> str:
    value = row.get(key)
    return "-" if value is None else fmt.format(value)


def print_rows(rows) -> None:
    table = [[header for header, _, _ in COLUMNS]] + [[_cell(r, k, f) for _, k, f in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    print()
    for line in table:
        print(
            "  ".join(
                cell.rjust(width) if i != 1 else cell.ljust(width) for i, (cell, width) in enumerate(zip(line, widths))
            )
        )
    print()


def markdown_table(rows) -> str:
    lines = ["| " + " | ".join(h for h, _, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(r, k, f) for _, k, f in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def print_prefill_costs(costs) -> None:
    """Where a joiner's prefill runs: fused into the decode step (every row padded to the prompt) or its own pass."""
    for c in costs:
        extra_fused = c["fused_ms"] - c["decode_ms"]
        print(
            f"prefill placement at c={c['concurrency']} (cache {c['cache_width']} columns): decode pass "
            f"{c['decode_ms']:.1f} ms ({c['decode_width']} tokens/row); fused into it (every row padded to a "
            f"{c['prompt_width']}-token prompt) {c['fused_ms']:.1f} ms, +{extra_fused:.1f} ms per join; a prefill "
            f"pass of its own: {c['prefill_1_ms']:.1f} ms for 1 prompt, {c['prefill_c_ms']:.1f} ms for "
            f"{c['concurrency']} ({c['prefill_c_ms'] / c['concurrency']:.1f} ms per request)"
        )


def evaluate_targets(rows) -> list[tuple[str, str, bool]]:
    targets = []
    for row in rows:
        name, c = row["setting"], row["concurrency"]
        if c == 16 and name in PACKING:
            targets.append(
                (
                    f"c=16 {name}: measured passes within 5% of ideal",
                    f"{row['passes_over_ideal']:.3f}",
                    row["passes_over_ideal"] <= 1.05,
                )
            )
        if c in (16, 64) and name in ADAPTIVE:
            targets.append(
                (
                    f"c={c} {name}: never slower than our k=1",
                    f"{row['throughput_vs_k1']:.2f}",
                    row["throughput_vs_k1"] >= 1.0,
                )
            )
            bound = row["forward_bound_vs_k1"]
            targets.append(
                (
                    f"c={c} {name}: x k=1 within 10% of the forward bound {bound:.2f}",
                    f"{row['throughput_vs_k1'] / bound:.3f}",
                    row["throughput_vs_k1"] >= 0.9 * bound,
                )
            )
    return targets
