"""``python -m ugatit_jax.report --workdir RUN``: one HTML page that shows how a run went, without TensorBoard.

::

    python -m ugatit_jax.report --workdir runs/emoji [--output runs/emoji/report.html] [--figures DIR]

The trainer writes the same page (``evaluation/run_report.py``) to ``RUN/report.html`` at the end of every run.
``--figures DIR`` also writes each evaluation plot as ``DIR/<measure>.svg``, for a README or a paper.
"""

from __future__ import annotations

import argparse
import os
import sys

from ugatit_jax import run_dir
from ugatit_jax.cli import UsageError, check_writable, doc_parser, make_main
from ugatit_jax.evaluation.run_report import evaluation_plots, write_report

PROG = "python -m ugatit_jax.report"


def _parser() -> argparse.ArgumentParser:
    parser = doc_parser(PROG, __doc__)
    parser.add_argument("--workdir", required=True, help="a train.py run folder")
    parser.add_argument("--output", default=None, help="the page (default: WORKDIR/report.html)")
    parser.add_argument(
        "--figures",
        default=None,
        metavar="DIR",
        help="also write each evaluation plot as DIR/<measure>.svg (e.g. for a README)",
    )
    return parser


def _run(args) -> None:
    workdir = run_dir.path(args.workdir)
    if not os.path.isdir(workdir):
        raise UsageError(f"--workdir={args.workdir}: does not exist; pass the --workdir of a train.py run")
    if not run_dir.has_outputs(workdir):
        raise UsageError(
            f"--workdir={args.workdir}: holds no {run_dir.METRICS}, {run_dir.EVAL}/ or {run_dir.SAMPLES}/; "
            "pass the --workdir of a train.py run"
        )
    if args.output and os.path.dirname(os.path.abspath(args.output)) != workdir:
        raise UsageError(f"--output={args.output}: must be in the run folder, or the page's relative links break")
    page = args.output or run_dir.report_file(workdir)
    check_writable(page, name=f"--output={args.output}" if args.output else f"{page} (the default --output)")
    if args.figures:
        check_writable(args.figures, folder=True, name=f"--figures={args.figures}")
    print(f"run report written to {write_report(workdir, args.output)}")
    if args.figures:
        plots = evaluation_plots(run_dir.read_evaluations(workdir))
        if not plots:
            raise UsageError(f"--figures: {args.workdir} holds no evaluation yet (eval/step_*.json)")
        try:
            os.makedirs(args.figures, exist_ok=True)
            for name, svg in plots.items():
                with open(os.path.join(args.figures, f"{name}.svg"), "w", encoding="utf-8") as f:
                    f.write(svg)
        except OSError as e:
            raise UsageError(f"--figures={args.figures}: cannot write there ({e.strerror or e})") from e
        print(f"{len(plots)} evaluation plots written to {args.figures}: {', '.join(plots)}")


main = make_main(PROG, _parser, _run)


if __name__ == "__main__":
    sys.exit(main())
