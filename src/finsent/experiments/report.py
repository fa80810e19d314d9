"""The pull-request report: one Markdown file that answers first whether a change beats a base revision.

It leads with a one-line verdict on validation macro-F1, the headline figures of both revisions
(macro-F1 and accuracy with the 95% interval of the difference and McNemar's test, from
`finsent.experiments.compare`; the int8 model's agreement with PyTorch) and the params that changed;
where the label audit's doubtful rows changed, their counts and the worst of them. Every metric of both
revisions follows in a collapsed section, then every plot of `dvc.yaml`, the base revision first, drawn
to PNG by vl-convert (`finsent.experiments.plots`: in-process, no browser).
"""

import argparse
import io
import json
import re
from pathlib import Path

import pandas as pd

from finsent import dvc_access
from finsent.atomic import atomic_dir
from finsent.audit_files import DOUBTFUL_FILES
from finsent.cli import run_cli
from finsent.errors import FinsentError
from finsent.experiments.compare import (
    Comparison,
    MetricComparison,
    bootstrap_sentence,
    compare_predictions,
    mcnemar_sentence,
    read_predictions,
)
from finsent.experiments.plots import draw_png, dvc_plots

REPORT_FILE = "report.md"
# The README's int8 figure (finsent-results): validation texts one at a time.
INT8_AGREEMENT = ("metrics/export.json", "onnx_int8.batch_1.agreement_with_pytorch")
AUDIT_DIR = "data/audit"
WORST_ROWS = 10
"""The doubtful rows of each split shown where the audit changed: the lowest quality first."""
# Speed depends on the machine each revision ran on, not on the change: not compared.
TIMING_METRICS = {"runtime_s", "samples_per_second"}
VERDICT_RULE = (
    "Verdict: Better where the 95% interval of the macro-F1 difference lies above 0, Worse where it "
    "lies below, else No significant difference; McNemar's p (accuracy) is shown beside it."
)


def write_pr_report(
    out_dir: Path,
    base: str = "main",
    predictions: str = "plots/predictions.csv",
    resamples: int = 10_000,
    seed: int = 0,
    image_url: str = "",
) -> Path:
    """Write `out_dir`/report.md and its PNG plots (linked as `image_url` + file name); return the report."""
    params, metrics = _diffs(base)
    comparison = compare_predictions(
        read_predictions(f"{base}:{predictions}"),
        read_predictions(predictions),
        names=(base, "workspace"),
        resamples=resamples,
        seed=seed,
    )
    plots = dvc_plots([base])
    with atomic_dir(out_dir) as staging:
        sections = [
            f"# Model report: workspace against `{base}`\n",
            verdict(comparison) + "\n",
            headline_markdown(comparison, metrics),
            params_markdown(params, base),
            audit_markdown(_doubtful_rows(base), _doubtful_rows(None), base),
            f"{VERDICT_RULE} Validation predictions `{predictions}`: {bootstrap_sentence(comparison)}\n",
            "<details><summary>Every metric of both revisions</summary>\n",
            metrics_markdown(metrics, base),
            "</details>\n",
            f"## Plots: `{base}` first (left, first colour), then the workspace\n",
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


def verdict(comparison: Comparison) -> str:
    """Better, worse or no significant difference, by the rule VERDICT_RULE states."""
    f1 = _by_metric(comparison)["macro_f1"]
    word = "Better" if f1.ci_low > 0 else "Worse" if f1.ci_high < 0 else "No significant difference"
    return f"**{word}**: macro-F1 {_difference(f1)}, McNemar p = {comparison.mcnemar_p:.2g}"


def headline_markdown(comparison: Comparison, metrics: dict) -> str:
    """Validation macro-F1 and accuracy of both revisions, and the int8 model's agreement with PyTorch."""
    c = comparison
    by_metric = _by_metric(c)
    path, key = INT8_AGREEMENT
    agreement = metrics.get(path, {}).get(key, {})
    lines = [
        f"| validation ({c.rows} rows) | {c.baseline} | {c.candidate} | difference [95% interval] |",
        "|---|---|---|---|",
        *(
            f"| {name} | {m.baseline:.3f} | {m.candidate:.3f} | {_difference(m)} |"
            for name, m in (("macro-F1", by_metric["macro_f1"]), ("accuracy", by_metric["accuracy"]))
        ),
        f"| int8 ONNX gives PyTorch's label | {_percent(agreement.get('old'))} "
        f"| {_percent(agreement.get('new'))} | |",
        "",
        mcnemar_sentence(c),
    ]
    return "\n".join(lines) + "\n"


def params_markdown(params: dict, base: str) -> str:
    """The params that differ, as `dvc params diff BASE` finds them: key, base value, new value."""
    changed = sorted((key, change) for changes in params.values() for key, change in changes.items())
    if not changed:
        return "No param changed.\n"
    lines = [
        f"| param changed | {base} | workspace |",
        "|---|---|---|",
        *(f"| `{key}` | {_value(c['old'])} | {_value(c['new'])} |" for key, c in changed),
    ]
    return "\n".join(lines) + "\n"


def audit_markdown(base_rows: dict, rows: dict, base: str) -> str:
    """Where the audit's doubtful rows changed: for each split, their number in both revisions, those
    added and removed, and the workspace's WORST_ROWS worst; nothing where they did not."""
    if all(_ids(base_rows.get(split)) == _ids(rows.get(split)) for split in DOUBTFUL_FILES):
        return ""
    lines = [f"## Label audit: doubtful rows changed (`{AUDIT_DIR}/`)\n"]
    for split in DOUBTFUL_FILES:
        old, new = _ids(base_rows.get(split)), _ids(rows.get(split))
        counts = f"{'-' if old is None else len(old)} at `{base}`, {'-' if new is None else len(new)} now"
        if old is not None and new is not None:
            counts += f" ({len(new - old)} added, {len(old - new)} removed)"
        lines.append(f"**{split}**: {counts}.\n")
        if new:
            worst = rows[split].head(WORST_ROWS)
            lines += [
                "| id | given | suggested | quality | text |",
                "|---|---|---|---|---|",
                *(
                    f"| {row.id} | {row.label} | {row.suggested} | {row.quality:.3f} | {_value(row.text)} |"
                    for row in worst.itertuples()
                ),
                "",
            ]
    return "\n".join(lines) + "\n"


def _doubtful_rows(rev: str | None) -> dict[str, pd.DataFrame]:
    """Each split's doubtful rows as revision `rev` (None: the workspace) holds them; a split whose file
    it lacks is left out."""
    rows = {}
    for split, name in DOUBTFUL_FILES.items():
        path = f"{AUDIT_DIR}/{name}"
        try:
            content = Path(path).read_bytes() if rev is None else dvc_access.read_bytes(path, rev)
        except (FileNotFoundError, dvc_access.NotAtRevision):
            continue
        rows[split] = pd.read_csv(io.BytesIO(content), dtype={"text": str}, keep_default_na=False)
    return rows


def _ids(rows: pd.DataFrame | None) -> set | None:
    return None if rows is None else set(rows["id"])


def metrics_markdown(metrics: dict, base: str) -> str:
    """Every metric of both revisions, as `dvc metrics diff BASE --all` finds them, timings left out."""
    lines = [
        f"| file | metric | {base} | workspace | change |",
        "|---|---|---|---|---|",
        *(
            f"| {path} | {key} | {_value(c.get('old'))} | {_value(c.get('new'))} | {_value(c.get('diff'))} |"
            for path, values in metrics.items()
            for key, c in sorted(values.items())
            if key.rsplit(".", 1)[-1] not in TIMING_METRICS
        ),
    ]
    return "\n".join(lines) + "\n"


def _by_metric(comparison: Comparison) -> dict[str, MetricComparison]:
    return {m.metric: m for m in comparison.metrics}


def _difference(m: MetricComparison) -> str:
    return f"{m.difference:+.3f} [{m.ci_low:+.3f}, {m.ci_high:+.3f}]"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _value(value) -> str:
    """A param or metric as one table cell: `-` where a revision has none."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return str(round(value, 5))  # as `dvc metrics diff --md` rounds
    text = value if isinstance(value, str) else json.dumps(value)
    return " ".join(text.split()).replace("|", "\\|")  # a line break or a bar would end the cell


def _diffs(base: str) -> tuple[dict, dict]:
    """`dvc params diff BASE` and `dvc metrics diff BASE --all`, as {file: {key: {old, new[, diff]}}}.

    Fails unless `base` holds every metrics file its dvc.yaml declares, readable (`dvc metrics diff`
    gives no value there); a metrics file that the change adds (a new stage's) has none at `base`.
    """
    metrics = dvc_access.metrics_diff(base)
    declared = _declared_metrics(base)
    for path, values in metrics.items():
        if path in declared and all(change.get("old") is None for change in values.values()):
            raise FinsentError(
                f"{base}:{path}: no metrics at revision {base} (missing, unreadable, or not in its dvc.yaml)"
            )
    return dvc_access.params_diff(base), metrics


def _declared_metrics(rev: str) -> set[str]:
    """The metrics files that `rev`'s dvc.yaml declares, top level and in its stages, `${var}`s filled in
    from its `vars`."""
    pipeline = dvc_access.yaml_at("dvc.yaml", rev, missing_ok=True) or {}
    values = {
        key: value
        for entry in pipeline.get("vars", [])
        if isinstance(entry, dict)
        for key, value in entry.items()
    }
    entries = [
        *pipeline.get("metrics", []),
        *(entry for stage in pipeline.get("stages", {}).values() for entry in stage.get("metrics", [])),
    ]
    paths = (next(iter(entry)) if isinstance(entry, dict) else entry for entry in entries)
    return {re.sub(r"\$\{(\w+)\}", lambda name: str(values.get(name[1], name[0])), path) for path in paths}


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
