"""The pull-request report: one Markdown file saying what a change does against a base revision.

Params and metrics as `dvc params diff` and `dvc metrics diff` give them, whether the change of the
validation predictions is real (`finsent.experiments.compare`), and every plot of `dvc.yaml` for both
revisions, drawn to PNG by vl-convert (`finsent.experiments.plots`: in-process, no browser).
"""

import argparse
import re
from pathlib import Path

from finsent.atomic import atomic_dir
from finsent.cli import run_cli
from finsent.errors import FinsentError
from finsent.experiments.compare import compare_predictions, comparison_markdown, read_predictions
from finsent.experiments.plots import draw_png, dvc_plots, run_dvc

REPORT_FILE = "report.md"


def write_pr_report(
    out_dir: Path,
    base: str = "main",
    predictions: str = "plots/predictions.csv",
    resamples: int = 10_000,
    seed: int = 0,
    image_url: str = "",
) -> Path:
    """Write `out_dir`/report.md and its PNG plots (linked as `image_url` + file name); return the report."""
    _check_base(base)
    comparison = compare_predictions(
        read_predictions(f"{base}:{predictions}"),
        read_predictions(predictions),
        names=(base, "workspace"),
        resamples=resamples,
        seed=seed,
    )
    params = _table_or(run_dvc("params", "diff", base, "--md"), "No param changed.")
    metrics = _table_or(run_dvc("metrics", "diff", base, "--md"), "No metric changed.")
    plots = dvc_plots([base])
    with atomic_dir(out_dir) as staging:
        sections = [
            f"# Model report: workspace against `{base}`\n",
            f"## Params\n\n{params}",
            f"## Metrics\n\n{metrics}",
            f"## Is the change real? Validation predictions, `{predictions}`\n\n"
            + comparison_markdown(comparison),
            "## Plots (both revisions)\n",
        ]
        for plot in plots:
            sections.append(f"### {plot.title}\n")
            if plot.missing:
                lacking = ", ".join(f"`{source}` at {revision}" for source, revision in plot.missing)
                sections.append(f"No data: {lacking}.\n")
            if plot.spec is not None:
                image = _slug(plot.title) + ".png"
                (staging / image).write_bytes(draw_png(plot))
                sections.append(f"![{plot.title}]({image_url}{image})\n")
        (staging / REPORT_FILE).write_text("\n".join(sections), encoding="utf-8")
    return out_dir / REPORT_FILE


def _check_base(base: str) -> None:
    """Fail unless `base` is a revision whose every metrics file (those of the workspace) can be read."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc.scm import RevError, resolve_rev

    try:
        with Repo() as repo:
            resolve_rev(repo.scm, base)
            shown = repo.metrics.show(revs=[base])
    except RevError:
        raise FinsentError(f"revision '{base}' does not exist") from None
    except DvcException as error:
        raise FinsentError(str(error)) from None
    if "error" in shown.get(base, {}):
        raise FinsentError(f"revision '{base}': metrics unreadable ({shown[base]['error']})")
    at_base = shown.get(base, {}).get("data", {})
    for path in shown["workspace"].get("data", {}):
        if path not in at_base:
            raise FinsentError(f"{path}: not a metrics file of revision '{base}' (see its dvc.yaml)")
        error = at_base[path].get("error")
        if isinstance(error, FileNotFoundError):
            raise FinsentError(f"{path}: missing at revision '{base}'")
        if error:
            raise FinsentError(f"{path}: unreadable at revision '{base}' ({error})")


def _table_or(markdown: str, nothing: str) -> str:
    """A Markdown table from DVC, or `nothing` where it has no row below its header."""
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    return markdown.strip() + "\n" if len(rows) > 2 else nothing + "\n"


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("out_dir", type=Path, help="folder to write report.md and the PNG plots into")
    parser.add_argument("--base", default="main", help="revision to compare the workspace with (main)")
    parser.add_argument("--predictions", default="plots/predictions.csv", help="predictions CSV in both")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap resamples (10000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (0)")
    parser.add_argument(
        "--image-url", default="", help="prefix of the images' links in report.md (default: beside it)"
    )
    args = parser.parse_args()
    report = write_pr_report(
        args.out_dir, args.base, args.predictions, args.resamples, args.seed, args.image_url
    )
    print(report)


def cli() -> None:
    """The `finsent-pr-report` command: main() with expected errors as one line."""
    run_cli(main)


if __name__ == "__main__":
    cli()
