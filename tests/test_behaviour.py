"""Behavioural tests of the model: the project's cases file, its loader's errors, the scoring, and the
evaluate stage's pass rates, reliability table and calibration error."""

import json
import textwrap
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from conftest import BEHAVIOUR_CASES, DOUBTFUL_VALIDATION_IDS, PROJECT, SOURCE_ENV, run, stage_script

from finsent.audit_files import trusted_label_metrics
from finsent.behaviour import FAILURE_COLUMNS, KINDS, load_cases, score_cases
from finsent.config import LABELS, PROBABILITY_COLUMNS
from finsent.errors import FinsentError
from finsent.inference.predictors import Predictor
from finsent.metrics import CALIBRATION_BINS, expected_calibration_error
from finsent.text import TextNormalization


def test_the_project_cases_load_and_cover_each_kind():
    cases = load_cases(BEHAVIOUR_CASES)
    assert len(cases) >= 100
    assert len({case.name for case in cases}) == len(cases)
    by_kind = Counter(case.kind for case in cases)
    assert set(by_kind) == set(KINDS)
    minimum = Counter(case.labels[0] for case in cases if case.kind == "minimum_functionality")
    assert set(minimum) == set(LABELS) and min(minimum.values()) >= 15
    for case in cases:
        assert all(text.strip() for text in case.texts), case.name
        if case.kind == "invariance":
            assert case.labels is None
            assert len(set(case.texts)) == len(case.texts) >= 2, case.name  # swapped, so all different
        elif case.kind == "directional":
            assert len(case.texts) == 2 and len(set(case.labels)) == 2, case.name
        else:
            assert len(case.texts) == 1, case.name
    invariance = next(case for case in cases if case.kind == "invariance")
    assert invariance.texts[:2] == (
        "$AAPL shares jump 8% after Apple raises its full-year outlook",
        "$MSFT shares jump 12% after Microsoft raises its full-year outlook",
    )


GOOD = """\
minimum_functionality:
  Bearish: [Shares plunge]
  Bullish: [Shares soar]
invariance:
  fillers:
    ticker: [$AAPL, $MSFT]
    company: [Apple, Microsoft]
  templates:
    - "{ticker}: {company} shares soar"
directional:
  - Bullish: Shares soar
    Bearish: Shares plunge
"""


def spoiled(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (
            spoiled("Bullish: [Shares soar]", "Bullsh: [Shares soar]"),
            ": minimum_functionality.Bullsh: Input should be",
        ),
        (
            spoiled("[Shares plunge]", "[Shares plunge, '  ']"),
            ": minimum_functionality.Bearish[1]: Value error, a blank",
        ),
        (
            spoiled("    Bearish: Shares plunge\n", ""),
            ": directional[0]: Value error, a directional case is two texts",
        ),
        (
            spoiled("    Bearish: Shares plunge\n", "    Bullish: Shares rise\n"),
            ', line 12: found duplicate key "Bullish" with value "Shares rise"',
        ),
        (
            spoiled("{company} shares", "{sector} shares"),
            ": invariance.templates[0]: no filler list 'sector' (invariance",
        ),
        (
            spoiled('"{ticker}: {company} shares soar"', "Shares soar"),
            ": invariance.templates[0]: no {slot} to swap",
        ),
        (
            spoiled("[$AAPL, $MSFT]", "[$AAPL]"),
            ": invariance.fillers.ticker: List should have at least 2 items",
        ),
        (
            spoiled("[Apple, Microsoft]", "[Apple, Microsoft, Amazon]"),
            ": invariance.templates[0]: its filler lists",
        ),
        (
            spoiled("[$AAPL, $MSFT]", "[$AAPL, 7]"),
            ": invariance.fillers.ticker[1]: Input should be a valid string",
        ),
        (spoiled("directional:", "directionl:"), ": directional: missing"),
        ("- a list\n", ": Input should be a valid dictionary"),
        ("minimum_functionality: [a\n", ", line 2: expected ',' or ']', but got '<stream end>'"),
    ],
)
def test_a_wrong_case_is_one_line_naming_it(tmp_path, content, problem):
    cases_file = tmp_path / "cases.yaml"
    cases_file.write_text(content)
    with pytest.raises(FinsentError) as raised:
        load_cases(cases_file)
    message = str(raised.value)
    assert message.startswith(f"{cases_file}{problem}")
    assert "\n" not in message


def test_the_evaluate_stage_stops_on_a_wrong_case_before_it_loads_a_model(tmp_path):
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    (tmp_path / "cases.yaml").write_text(spoiled("    Bearish: Shares plunge\n", ""))
    evaluate = ["no-models", "validation.jsonl", "audit.csv", "cases.yaml", "validation.json", "plots"]
    result = run([*stage_script("evaluate.py"), *evaluate], cwd=tmp_path, env=SOURCE_ENV, check=False)
    assert result.returncode == 1
    assert result.stderr == (
        "error: cases.yaml: directional[0]: Value error, a directional case is two texts, each under its "
        "own label, not 1\n"
    )


class KeywordModel(Predictor):
    """A model that reads one word: "soar" Bullish, "plunge" Bearish, anything else Neutral."""

    def __init__(self):
        super().__init__(batch_size=4, normalize=TextNormalization(), temperature=1.0)

    def batch_logits(self, texts: list[str]) -> np.ndarray:
        classes = [1 if "soar" in text else 0 if "plunge" in text else 2 for text in texts]
        return np.eye(len(LABELS))[classes] * 5


def test_a_case_passes_when_each_of_its_texts_gets_its_label(tmp_path):
    (tmp_path / "cases.yaml").write_text(
        textwrap.dedent(
            """\
            minimum_functionality:
              Bearish: [Shares plunge, Shares slip]
              Bullish: [Shares soar]
            invariance:
              fillers: {company: [Apple, Microsoft, Amazon], move: [soar, soar, plunge]}
              templates: ["{company} shares soar", "{company} shares {move}"]
            directional:
              - {Bullish: Shares soar, Bearish: Shares plunge}
              - {Bullish: Shares rise, Bearish: Shares plunge}
            """
        )
    )
    rates, failures = score_cases(load_cases(tmp_path / "cases.yaml"), KeywordModel())
    assert rates == {
        "minimum_functionality": pytest.approx(2 / 3),
        "invariance": 0.5,
        "directional": 0.5,
        "overall": pytest.approx(4 / 7),  # cases passed of all cases, whatever their kind
    }
    assert list(failures.columns) == FAILURE_COLUMNS
    # Every text of a failed case; an invariance case expects its first variant's label.
    assert failures.values.tolist() == [
        ["minimum_functionality", "minimum_functionality.Bearish[1]", "Shares slip", "Bearish", "Neutral"],
        ["invariance", "invariance.templates[1]", "Apple shares soar", "Bullish", "Bullish"],
        ["invariance", "invariance.templates[1]", "Microsoft shares soar", "Bullish", "Bullish"],
        ["invariance", "invariance.templates[1]", "Amazon shares plunge", "Bullish", "Bearish"],
        ["directional", "directional[1]", "Shares rise", "Bullish", "Neutral"],
        ["directional", "directional[1]", "Shares plunge", "Bearish", "Bearish"],
    ]


def test_the_evaluate_stage_reports_pass_rates_reliability_and_calibration(exported_project):
    metrics = json.loads((exported_project / "metrics/validation.json").read_text())
    plots = exported_project / "plots"
    cases = load_cases(BEHAVIOUR_CASES)
    rates = metrics["behaviour"]
    assert list(rates) == [*KINDS, "overall"]
    assert all(0 <= rate <= 1 for rate in rates.values())
    failures = pd.read_csv(plots / "behaviour_failures.csv", keep_default_na=False)
    assert list(failures.columns) == FAILURE_COLUMNS
    texts = {case.name: len(case.texts) for case in cases}
    failed = failures.drop_duplicates("case")
    for kind in KINDS:
        of_kind = [case for case in cases if case.kind == kind]
        failed_of_kind = failed[failed["kind"] == kind]["case"]
        assert rates[kind] == pytest.approx(1 - len(failed_of_kind) / len(of_kind))
        assert sum(texts[name] for name in failed_of_kind) == (failures["kind"] == kind).sum()
    assert rates["overall"] == pytest.approx(1 - len(failed) / len(cases))

    predictions = pd.read_csv(plots / "predictions.csv")
    labels = predictions["actual"].map(LABELS.index).to_numpy()
    probabilities = predictions[list(PROBABILITY_COLUMNS)].to_numpy()
    assert metrics["expected_calibration_error"] == pytest.approx(
        expected_calibration_error(labels, probabilities), abs=1e-5
    )
    reliability = pd.read_csv(plots / "reliability.csv")
    assert list(reliability.columns) == ["bin", "confidence", "accuracy", "count"]
    assert reliability["count"].sum() == len(predictions)
    assert reliability["bin"].between(1, CALIBRATION_BINS).all() and reliability["bin"].is_unique
    gaps = (reliability["accuracy"] - reliability["confidence"]).abs()
    assert (reliability["count"] * gaps).sum() / len(predictions) == pytest.approx(
        metrics["expected_calibration_error"], abs=1e-4
    )
    # Validation again without the rows the audit doubts (data/audit/validation.csv): its rows, and
    # the figures of the same predictions on them.
    doubtful = predictions["id"].isin(DOUBTFUL_VALIDATION_IDS).to_numpy()
    trusted = metrics["trusted_labels"]
    assert trusted["rows"] == len(predictions) - len(DOUBTFUL_VALIDATION_IDS)
    assert trusted == pytest.approx(trusted_label_metrics(labels, probabilities, doubtful), abs=1e-9)
