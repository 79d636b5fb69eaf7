"""`python -m analysis frontier --experiment NAME --out DIR`: the frontier tables and figures of a sweep.

Bad input (no store, no such experiment, no finished runs, an unreachable server, unreadable
CSVs) ends with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlflow.exceptions import MlflowException

from analysis.collapse import CollapseRule
from analysis.frontier import HV_REFERENCE, MEASURES, check_reference
from analysis import methods
from analysis.load import DEFAULT_URI, STAGES, AnalysisError, open_client
from analysis.report import Options, analyse, summary
from sweep.errors import EXIT_BAD_INPUT


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True)
    p = commands.add_parser("frontier", help="tables and figures of the capability / circuit-size frontier")
    p.add_argument("--experiment", help="MLflow experiment (e.g. frontier)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI,
                   help=f"MLflow store: sqlite:///<file> or http(s)://host:port (default: $MLFLOW_TRACKING_URI or {DEFAULT_URI})")
    p.add_argument("--parent", metavar="RUN_ID", help="only the jobs of this sweep (parent run)")
    p.add_argument("--stage", choices=STAGES, default="train",
                   help="train: training runs (default); prune: re-prune runs (sweep.stage=prune) instead")
    p.add_argument("--method", help="only runs pruned by this discovery method (prune.method; runs from before it "
                                    "existed count as mask): needed when the runs read hold several")
    p.add_argument("--from-csv", type=Path, metavar="DIR", help="rebuild from DIR/runs.csv and DIR/tasks.csv, offline")
    p.add_argument("--common-tasks", action="store_true",
                   help="circuit size over the tasks solved by every point with a circuit, not each point's own")
    p.add_argument("--measure", choices=list(MEASURES), default="target",
                   help="circuit size on the frontier and in the figures: target (edges at the target loss, the paper's; "
                        "default) or f80 (edges at 80%% faithfulness); findings.csv judges both")
    p.add_argument("--collapse", action="append", default=[], metavar="KEY=VALUE",
                   help="collapse threshold (repeatable): ref_margin, dead_frac, dead_layers, solved_frac, "
                        "shrink_ratio; a number or off")
    p.add_argument("--hv-ref", nargs=2, type=float, default=HV_REFERENCE, metavar=("LOSS", "EDGES"),
                   help=f"hypervolume reference point (default {HV_REFERENCE[0]:g} nats/byte, {HV_REFERENCE[1]:g} edges)")
    p.add_argument("--no-figures", action="store_true", help="tables only (quick, e.g. while trying collapse thresholds)")
    p.add_argument("--no-log", action="store_true", help="do not log the results to the sweep's parent run")
    p.add_argument("--readme", type=Path, metavar="FILE", help="also write findings.md into FILE's findings section "
                                                               "(between its two `<!-- findings: ... -->` lines)")
    m = commands.add_parser("methods", help="circuit discovery methods side by side on the same checkpoints")
    m.add_argument("--experiment", required=True, help="MLflow experiment with training and re-prune runs")
    m.add_argument("--out", type=Path, required=True, help="output folder")
    m.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI, help="MLflow store")
    m.add_argument("--no-figures", action="store_true", help="tables only")
    return top


def compare_methods(args) -> int:
    files, table, overlap, apart = methods.compare(open_client(args.tracking_uri), args.experiment, args.out,
                                                   not args.no_figures)
    print(methods.summary(table, overlap, apart))
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "methods":
            return compare_methods(args)
        rule = CollapseRule.parse(args.collapse)
        options = Options(out=args.out, experiment=args.experiment, tracking_uri=args.tracking_uri, parent=args.parent,
                          stage=args.stage, method=args.method, from_csv=args.from_csv, common_tasks=args.common_tasks, measure=args.measure, rule=rule,
                          hv_reference=check_reference(tuple(args.hv_ref)), figures=not args.no_figures,
                          log=not args.no_log, readme=args.readme)
        result = analyse(options)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except MlflowException as e:  # the store went away mid-way, or refused a write
        print(f"error: MLflow: {str(e).strip().splitlines()[0][:300]}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as e:  # --out not writable, or a file where the folder should be
        print(f"error: cannot write the results: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary(result, rule))
    return 0


if __name__ == "__main__":
    sys.exit(main())
