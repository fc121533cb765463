"""Accuracy vs acceleration factor (the paper's Figure 5 Pareto plot) from a sweep table.

Why its own script: the sweep writes the table once (hours on a GPU); the plot is redrawn from the JSON as
often as one likes, without lm-eval or torch (drawing: mtp_ds.evaluation.pareto):

    python eval/pareto_plot.py outputs/sweep/sweep.json [outputs/sweep/pareto.png]
"""

import json
import sys
from pathlib import Path

from mtp_ds.evaluation.pareto import pareto_frontier, plot_pareto  # noqa: F401 - pareto_frontier re-exported for eval scripts


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or len(argv) > 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    table = json.loads(Path(argv[0]).read_text())
    out = argv[1] if len(argv) == 2 else Path(argv[0]).with_name("pareto.png")
    print(
        plot_pareto(
            table["rows"],
            out,
            title=Path(str(table.get("model", ""))).name,
            metric_label=table.get("metric", "accuracy"),
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
