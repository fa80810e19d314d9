"""dvc.yaml's plots: the evaluate stage's tables, drawn by `finsent-plots` into a page that opens offline.

The page is checked as drawn: the SVG of each plot is parsed and its marks read back (each confusion
cell's number, each precision-recall panel's legend) against what scikit-learn computes from the same
files, in throw-away git + DVC repositories holding the project's own plot definitions and templates.
"""

import json
import re
import shutil
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import (
    PROJECT,
    SOURCE_ENV,
    commit_files,
    git_dvc_repo,
    run,
    run_here,
    set_git_identity,
)
from ruamel.yaml import YAML

from finsent.config import LABELS
from finsent.experiments.plots import cli as finsent_plots
from finsent.metrics import CALIBRATION_BINS, classification_metrics, precision_recall_curves
from finsent.plot_data import precision_recall_table

SVG = "{http://www.w3.org/2000/svg}"
PAGE = "dvc_plots/offline.html"
COUNTS = "Confusion matrix (validation)"
SHARES = "Confusion matrix, share of each actual class (validation; recall on the diagonal)"
CURVES = "Precision-recall, one panel per class (validation, one vs rest)"
RELIABILITY = "Reliability (validation, 15 confidence bins)"
NOISE = "Label noise estimated by the audit (train; share of each true class carrying each label)"
# The audit's files: its noise matrix (columns of true labels summing to 1), validation's doubtful rows.
NOISE_SHARES = {
    ("Bearish", "Bearish"): 0.9,
    ("Bearish", "Bullish"): 0.02,
    ("Bearish", "Neutral"): 0.08,
    ("Bullish", "Bearish"): 0.01,
    ("Bullish", "Bullish"): 0.93,
    ("Bullish", "Neutral"): 0.06,
    ("Neutral", "Bearish"): 0.031,
    ("Neutral", "Bullish"): 0.045,
    ("Neutral", "Neutral"): 0.924,
}
AUDIT_FILES = {
    "data/audit/noise_matrix.csv": "true_label,given_label,share,rows\n"
    + "".join(
        f"{true},{given},{share},{round(share * 100)}\n" for (true, given), share in NOISE_SHARES.items()
    ),
    "data/audit/validation.csv": "id,text,label,suggested,quality\n",
}
# dvclive's files for the two training plots, so that every plot of dvc.yaml has data.
TRAINING_CURVES = {
    "metrics/train/plots/metrics/dev/macro_f1.tsv": "step\tmacro_f1\n0\t0.61\n1\t0.72\n",
    "metrics/train/plots/metrics/train/loss.tsv": "step\tloss\n0\t0.9\n1\t0.7\n",
    "metrics/train/plots/metrics/dev/log_loss.tsv": "step\tlog_loss\n0\t0.8\n1\t0.75\n",
}


def project_dvc_yaml(*sections: str, **more) -> str:
    """The project's dvc.yaml reduced to its vars and the given top-level sections (no stages), and `more`."""
    project = YAML(typ="safe").load((PROJECT / "dvc.yaml").read_text())
    return json.dumps(
        {"vars": project["vars"], **{name: project[name] for name in sections}, **more}, indent=1
    )


def plot_templates() -> dict[str, str]:
    """The project's plot templates (DVC's template folder, .dvc/plots/), as files to commit."""
    return {f".dvc/plots/{file.name}": file.read_text() for file in (PROJECT / ".dvc/plots").glob("*")}


def with_project_plots() -> dict[str, str]:
    """The project's plot definitions and templates, as files to commit."""
    return {"dvc.yaml": project_dvc_yaml("plots"), **plot_templates()}


def draw(repo: Path, *args: str):
    """`finsent-plots ARGS` in `repo`, importing this checkout's source."""
    return run(["python", "-m", "finsent.experiments.plots", *args], cwd=repo, env=SOURCE_ENV)


def draw_here(repo: Path, *args: str, check: bool = True):
    """`finsent-plots ARGS` in `repo`, run in this process (`run_here`): the page's own tests above run
    the command as a real process."""
    result = run_here(finsent_plots, ["finsent-plots", *args], repo)
    assert result.returncode == 0 or not check, result.stderr
    return result


def plot_svgs(page: str) -> dict[str, ET.Element]:
    """Each drawn plot of the page, parsed, by its heading."""
    sections = re.findall(
        r"<section>\n<h2>(.*?)</h2>\n(?:<p .*?</p>\n)?(<svg.*?</svg>)?\n</section>", page, re.S
    )
    return {title: ET.fromstring(svg) for title, svg in sections if svg}


def groups(svg: ET.Element, role: str) -> list[ET.Element]:
    return [g for g in svg.iter(f"{SVG}g") if role in g.get("class", "").split()]


def texts(element: ET.Element) -> list[str]:
    return [text.text for text in element.iter(f"{SVG}text")]


def axis_titles(svg: ET.Element) -> set[str]:
    return {title for group in groups(svg, "role-axis-title") for title in texts(group)}


def cells_by_revision(svg: ET.Element) -> dict[str, dict[tuple[str, str], str]]:
    """A confusion plot's numbers: for each revision (column), (actual, predicted) -> text in the cell."""
    (header,) = groups(svg, "role-column-header")
    panels = [g for g in groups(svg, "role-mark") if "mark-text" in g.get("class")]
    drawn = {}
    for revision, panel in zip(texts(header), panels, strict=True):
        drawn[revision] = {}
        for text in panel.iter(f"{SVG}text"):
            fields = dict(part.split(": ") for part in text.get("aria-label").split("; "))
            drawn[revision][(fields["actual"], fields["predicted"])] = text.text
    return drawn


def aria(element: ET.Element) -> dict[str, str]:
    """The fields Vega writes into a mark's aria-label: `name: value; name: value`."""
    return dict(part.split(": ", 1) for part in element.get("aria-label").split("; "))


def reliability_drawn(svg: ET.Element) -> dict:
    """A reliability diagram as drawn: its dashed diagonal's path, each point's number label and each
    histogram bar, by (revision, bin or confidence)."""
    marks = groups(svg, "role-mark")
    (diagonal,) = [path for g in marks for path in g.iter(f"{SVG}path") if path.get("stroke-dasharray")]
    labels = {
        (fields["rev"], float(fields["confidence"])): text.text
        for g in marks
        if "mark-text" in g.get("class")
        for text in g.iter(f"{SVG}text")
        if "texts" in (fields := aria(text))
    }
    bars = {
        (fields["rev"], int(fields["bin"])): int(fields["texts"])
        for g in marks
        if "mark-rect" in g.get("class")
        for path in g.iter(f"{SVG}path")
        for fields in [aria(path)]
    }
    return {"diagonal": diagonal.get("d"), "labels": labels, "bars": bars}


def assert_reliability_drawn(svg: ET.Element, tables: dict[str, pd.DataFrame]) -> None:
    """The diagonal from the panel's (0, 0) corner to its (1, 1), and each revision's bins with their
    number of texts, as labels beside the points and as bars."""
    drawn = reliability_drawn(svg)
    assert re.fullmatch(r"M0,(\d+)L(\d+),0", drawn["diagonal"]), drawn["diagonal"]
    assert drawn["labels"] == {
        (revision, row.confidence): str(row.count)
        for revision, table in tables.items()
        for row in table.itertuples()
    }
    assert drawn["bars"] == {
        (revision, row.bin): row.count for revision, table in tables.items() for row in table.itertuples()
    }


def confusion(predictions: pd.DataFrame) -> pd.DataFrame:
    """Rows of each (actual, predicted) pair, every pair of classes present (scikit-learn's matrix)."""
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(predictions["actual"], predictions["predicted"], labels=LABELS)
    return pd.DataFrame(matrix, index=LABELS, columns=LABELS)


def assert_counts_drawn(cells: dict, predictions: pd.DataFrame) -> None:
    expected = confusion(predictions)
    assert cells == {(a, p): str(expected.loc[a, p]) for a in LABELS for p in LABELS}


def assert_shares_drawn(cells: dict, predictions: pd.DataFrame) -> None:
    expected = confusion(predictions)
    shares = expected.div(expected.sum(axis=1), axis=0)
    assert set(cells) == {(a, p) for a in LABELS for p in LABELS}
    for (actual, predicted), text in cells.items():
        assert text.endswith("%")
        assert float(text[:-1]) / 100 == pytest.approx(shares.loc[actual, predicted], abs=0.0005 + 1e-9)


@pytest.fixture(scope="module")
def evaluated_repo(tmp_path_factory, exported_project) -> Path:
    """A git + DVC repo with the project's plots and the real evaluate stage's outputs for a tiny model
    on 200 validation rows (`exported_project`'s: its plots/ and metrics/validation.json), committed on
    main."""
    repo = git_dvc_repo(tmp_path_factory.mktemp("evaluated") / "repo")
    shutil.copy(PROJECT / "params.yaml", repo / "params.yaml")
    shutil.copytree(exported_project / "plots", repo / "plots")
    (repo / "metrics").mkdir()
    shutil.copy(exported_project / "metrics/validation.json", repo / "metrics/validation.json")
    commit_files(repo, {**with_project_plots(), **TRAINING_CURVES, **AUDIT_FILES}, "evaluated")
    return repo


def test_precision_recall_table_holds_each_class_curve_and_average_precision():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 120)
    probabilities = rng.dirichlet(np.ones(3), 120)
    curves = precision_recall_curves(labels, probabilities)
    per_class = classification_metrics(labels, probabilities)["per_class"]

    table = precision_recall_table(curves, per_class)

    assert list(table.columns) == ["class", "recall", "precision", "average_precision"]
    assert list(dict.fromkeys(table["class"])) == list(LABELS)
    for name in LABELS:
        rows = table[table["class"] == name]
        pd.testing.assert_frame_equal(rows[["recall", "precision"]].reset_index(drop=True), curves[name])
        assert set(rows["average_precision"]) == {round(per_class[name]["average_precision"], 5)}


def test_evaluate_writes_the_predictions_and_the_long_precision_recall_table(evaluated_repo):
    plots = evaluated_repo / "plots"
    assert sorted(path.name for path in plots.iterdir()) == [
        "behaviour_failures.csv",
        "precision_recall.csv",
        "predictions.csv",
        "reliability.csv",
    ]
    predictions = pd.read_csv(plots / "predictions.csv")
    assert list(predictions.columns) == ["id", "actual", "predicted", "p_Bearish", "p_Bullish", "p_Neutral"]
    assert len(predictions) == 200
    table = pd.read_csv(plots / "precision_recall.csv")
    per_class = json.loads((evaluated_repo / "metrics/validation.json").read_text())["per_class"]
    assert list(dict.fromkeys(table["class"])) == list(LABELS)
    for name, rows in table.groupby("class"):
        assert set(rows["average_precision"]) == {round(per_class[name]["average_precision"], 5)}
        assert rows[["recall", "precision"]].iloc[-1].tolist() == [0.0, 1.0]  # scikit-learn's last point


def test_page_draws_every_plot_readably_and_references_nothing_outside(evaluated_repo):
    result = draw(evaluated_repo)
    page_file = evaluated_repo / PAGE
    assert result.stdout.strip() == page_file.resolve().as_uri()
    page = page_file.read_text(encoding="utf-8")

    # Self-contained: no script, no stylesheet or image link, no URL to load anything from.
    assert not re.search(r"""\b(?:src|href)\s*=\s*["']?(?!#|data:)""", page)
    assert not re.search(r"""url\(\s*["']?(?!#|data:)""", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "cdn" not in page.lower()

    svgs = plot_svgs(page)
    assert list(svgs) == [
        COUNTS,
        SHARES,
        CURVES,
        "Dev macro-F1 by epoch",
        "Loss by epoch (train and dev)",
        RELIABILITY,
        NOISE,
    ]
    for svg in svgs.values():  # drawn marks (cells, lines), not an empty frame
        marks = [
            g for g in groups(svg, "role-mark") if {"mark-rect", "mark-line"} & set(g.get("class").split())
        ]
        assert marks and all(list(mark.iter(f"{SVG}path")) for mark in marks)

    predictions = pd.read_csv(evaluated_repo / "plots/predictions.csv")
    counts = svgs[COUNTS]
    assert axis_titles(counts) == axis_titles(svgs[SHARES]) == {"actual", "predicted"}
    assert_counts_drawn(cells_by_revision(counts)["workspace"], predictions)
    assert_shares_drawn(cells_by_revision(svgs[SHARES])["workspace"], predictions)

    curves = svgs[CURVES]
    assert texts(groups(curves, "role-column-header")[0]) == list(LABELS)  # one panel per class, by name
    assert axis_titles(curves) == {"recall", "precision"}
    assert len(groups(curves, "role-mark")) == len(LABELS)  # one line mark a panel
    per_class = json.loads((evaluated_repo / "metrics/validation.json").read_text())["per_class"]
    legends = [texts(legend) for legend in groups(curves, "role-legend")]
    assert legends == [[f"workspace: AP {per_class[name]['average_precision']:.3f}"] for name in LABELS]
    assert not [name for name in texts(curves) if name.endswith(".csv")]

    # The evaluate stage's bins, each with its number of texts, about the diagonal.
    reliability = pd.read_csv(evaluated_repo / "plots/reliability.csv")
    assert reliability["count"].sum() == len(predictions)
    assert_reliability_drawn(svgs[RELIABILITY], {"workspace": reliability})

    # The audit's noise matrix: each (true, given) cell's share, as a percentage.
    noise = svgs[NOISE]
    assert axis_titles(noise) == {"true label (estimated)", "given label"}
    (panel,) = [g for g in groups(noise, "role-mark") if "mark-text" in g.get("class")]
    drawn = {}
    for text in panel.iter(f"{SVG}text"):
        fields = aria(text)
        drawn[(fields["true label (estimated)"], fields["given label"])] = text.text
    assert drawn == {cell: f"{share:.1%}" for cell, share in NOISE_SHARES.items()}


def test_page_of_a_revision_draws_both_side_by_side(evaluated_repo, tmp_path):
    repo = tmp_path / "clone"
    run(["git", "clone", "-q", str(evaluated_repo), str(repo)], cwd=tmp_path)
    set_git_identity(repo)
    committed = pd.read_csv(repo / "plots/predictions.csv")
    perfect = committed.assign(predicted=committed["actual"])
    perfect.to_csv(repo / "plots/predictions.csv", index=False)
    table = pd.read_csv(repo / "plots/precision_recall.csv")
    table.assign(average_precision=1.0).to_csv(repo / "plots/precision_recall.csv", index=False)

    draw(repo, "main")
    svgs = plot_svgs((repo / PAGE).read_text())

    counts = cells_by_revision(svgs[COUNTS])
    assert list(counts) == ["main", "workspace"]  # the revision named first, left
    assert_counts_drawn(counts["workspace"], perfect)  # off the diagonal: every cell a written 0
    assert_counts_drawn(counts["main"], committed)
    shares = cells_by_revision(svgs[SHARES])
    assert_shares_drawn(shares["workspace"], perfect)
    assert_shares_drawn(shares["main"], committed)
    per_class = json.loads((repo / "metrics/validation.json").read_text())["per_class"]
    legends = [texts(legend) for legend in groups(svgs[CURVES], "role-legend")]
    assert legends == [
        [f"main: AP {per_class[name]['average_precision']:.3f}", "workspace: AP 1.000"] for name in LABELS
    ]


@pytest.fixture(scope="module")
def small_repo_made(tmp_path_factory) -> Path:
    """A git + DVC repo with the project's plots and a few rows of data for each, committed on main."""
    repo = git_dvc_repo(tmp_path_factory.mktemp("small") / "repo")
    predictions = "id,actual,predicted\n0,Bearish,Bearish\n1,Bullish,Neutral\n2,Neutral,Neutral\n"
    curves = "class,recall,precision,average_precision\n" + "".join(
        f"{name},1.0,0.5,0.75\n{name},0.0,1.0,0.75\n" for name in LABELS
    )
    reliability = "bin,confidence,accuracy,count\n10,0.65,0.5,2\n15,0.98,1.0,1\n"
    data = {
        "plots/predictions.csv": predictions,
        "plots/precision_recall.csv": curves,
        "plots/reliability.csv": reliability,
        **TRAINING_CURVES,
    }
    commit_files(repo, {**with_project_plots(), **data}, "main")
    return repo


@pytest.fixture
def small_repo(small_repo_made, tmp_path) -> Path:
    """This test's own copy of `small_repo_made`."""
    repo = tmp_path / "repo"
    shutil.copytree(small_repo_made, repo, symlinks=True)
    return repo


def use_plot(repo: Path, title: str, template: dict | None = None) -> None:
    """Replace dvc.yaml's plots by one of plots/predictions.csv, drawn with `template` if given."""
    definition = {"x": "actual", "y": {"plots/predictions.csv": "predicted"}, "template": "confusion"}
    if template is not None:
        (repo / ".dvc/plots/custom.json").write_text(json.dumps(template))
        definition["template"] = "custom"
    (repo / "dvc.yaml").write_text(json.dumps({"plots": [{title: definition}]}))


def test_a_data_file_missing_is_noted_and_the_other_plots_drawn(small_repo):
    (small_repo / "plots/precision_recall.csv").unlink()
    draw_here(small_repo)
    page = (small_repo / PAGE).read_text()
    assert (
        f"<h2>{CURVES}</h2>\n"
        f'<p class="missing">No data: plots/precision_recall.csv at workspace.</p>\n' in page
    )
    assert CURVES not in plot_svgs(page) and COUNTS in plot_svgs(page)


def test_nothing_to_draw_is_an_error(small_repo):
    shutil.rmtree(small_repo / "plots")
    shutil.rmtree(small_repo / "metrics")
    result = draw_here(small_repo, check=False)
    assert (result.returncode, result.stderr) == (1, "error: dvc.yaml: no plot has data to draw\n")
    assert not (small_repo / PAGE).exists()


def test_unknown_revision_is_named(small_repo):
    result = draw_here(small_repo, "nope", check=False)
    assert result.returncode == 1
    assert result.stderr.startswith("error: dvc plots diff nope --json: ") and "'nope'" in result.stderr
    assert result.stderr.count("\n") == 1


def test_a_template_that_loads_an_outside_image_is_refused(small_repo):
    # A template (from a branch, say) whose marks are images from elsewhere: the page would fetch them.
    use_plot(
        small_repo,
        "Tracked",
        {
            "data": {"values": "<DVC_METRIC_DATA>"},
            "mark": "image",
            "encoding": {
                "x": {"field": "<DVC_METRIC_X>", "type": "nominal"},
                "url": {"value": "https://example.invalid/pixel.png"},
            },
        },
    )
    result = draw_here(small_repo, check=False)
    assert (result.returncode, result.stderr) == (
        1,
        "error: plot Tracked: refers to https://example.invalid/pixel.png, outside the page\n",
    )
    assert not (small_repo / PAGE).exists()


def test_a_template_that_loads_outside_data_fetches_nothing(small_repo):
    spec = {
        "data": {"url": "https://example.invalid/data.csv"},
        "usermeta": {"unused": "<DVC_METRIC_DATA>"},  # DVC requires its data anchor in a template
        "mark": "point",
    }
    use_plot(small_repo, "Remote data", spec)
    result = draw_here(small_repo, check=False)
    assert (result.returncode, result.stderr) == (
        1,
        "error: plot Remote data: Vega-Lite could not draw it "
        "(Error: External data url not allowed: https://example.invalid/data.csv)\n",
    )


def test_markup_in_a_plot_title_is_text(small_repo):
    title = '<img src=x onerror="alert(1)">'
    use_plot(small_repo, title)
    draw_here(small_repo)
    page = (small_repo / PAGE).read_text()
    assert "<img" not in page
    assert "<h2>&lt;img src=x onerror=&quot;alert(1)&quot;&gt;</h2>" in page
    (svg,) = plot_svgs(page).values()
    assert title in texts(svg)  # drawn as the plot's title, as text


def test_the_page_is_the_finsent_plots_command():
    scripts = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["finsent-plots"] == "finsent.experiments.plots:cli"


def test_the_reliability_diagram_draws_the_diagonal_and_each_bins_number_of_texts(small_repo):
    # A bin of two texts at accuracy 0 must read as two texts, beside a revision whose bins differ.
    run(["git", "tag", "base"], cwd=small_repo)
    (small_repo / "plots/reliability.csv").write_text(
        "bin,confidence,accuracy,count\n6,0.37,0.0,2\n15,0.98,0.9,40\n"
    )
    draw_here(small_repo, "base")
    svg = plot_svgs((small_repo / PAGE).read_text())[RELIABILITY]
    tables = {
        "base": pd.DataFrame({"bin": [10, 15], "confidence": [0.65, 0.98], "count": [2, 1]}),
        "workspace": pd.DataFrame({"bin": [6, 15], "confidence": [0.37, 0.98], "count": [2, 40]}),
    }
    assert_reliability_drawn(svg, tables)
    assert "perfect calibration" in texts(svg)
    assert {"mean confidence of the bin", "accuracy of the bin", "texts"} <= axis_titles(svg)


def test_the_reliability_template_bins_as_the_metrics_do():
    template = (PROJECT / ".dvc/plots/reliability.json").read_text()
    assert template.count(f"/ {CALIBRATION_BINS}") == 2  # the histogram's bin edges
    assert f"({CALIBRATION_BINS} equal bins)" in template
    assert (
        f"Reliability (validation, {CALIBRATION_BINS} confidence bins)" in (PROJECT / "dvc.yaml").read_text()
    )
