"""Report a sweep's results:  python src/report.py outputs/multirun/<date>_<time>  [--sort KEY] [--no-plot]
[--no-group-seeds]."""
import argparse
import sys

from trainlab.errors import USER_ERROR_EXIT, TrainlabError, os_error_line, refused_by_file_system
from trainlab.runs.report import CSV_NAME, DEFAULT_SORT, PLOT_NAME, SEED, report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=f"Table the jobs of a sweep (or any folder of runs) best validation accuracy first; write "
                    f"{CSV_NAME} and {PLOT_NAME} into the folder.")
    parser.add_argument("folder", help="a sweep's folder (outputs/multirun/<date>_<time>), a run's, or outputs")
    parser.add_argument("--sort", default=DEFAULT_SORT, metavar="KEY",
                        help=f"the column to sort by: a metric or a setting (default {DEFAULT_SORT}, best first)")
    parser.add_argument("--no-plot", action="store_true", help=f"skip {PLOT_NAME} (and importing matplotlib)")
    parser.add_argument("--no-group-seeds", action="store_true",
                        help=f"a row per job; by default jobs that differ only in {SEED} share a row: the mean, "
                             "standard deviation and n of their accuracies")
    args = parser.parse_args()
    try:
        report(args.folder, sort=args.sort, plot=not args.no_plot, group_seeds=not args.no_group_seeds)
    except (TrainlabError, OSError) as e:  # OSError: report.csv or the plot cannot be written (full, read-only)
        refusal = refused_by_file_system(e)
        if isinstance(e, OSError) and refusal is None:
            raise
        print(f"error: {os_error_line(refusal) if refusal is not None else e}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)


if __name__ == "__main__":
    main()
