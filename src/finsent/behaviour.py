"""Behavioural tests of the model (CheckList, Ribeiro et al., 2020), from a YAML file of cases.

Three kinds, each case a few texts and the labels they must get:
- minimum functionality: a plain headline and its label;
- invariance: a template filled with each of a few tickers, companies, numbers or dates; every
  variant must get the first variant's label, whichever it is;
- directional: two texts a word or two apart, each under the label it must get (the labels differ).
A case passes when every one of its texts gets its label. The evaluate stage scores the cases with
the model it evaluates.
"""

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from finsent.config import LABELS, Label, read_yaml, validated
from finsent.errors import FinsentError
from finsent.inference.predictors import Predictor

KINDS = ("minimum_functionality", "invariance", "directional")
FAILURE_COLUMNS = ["kind", "case", "text", "expected", "predicted"]


@dataclass(frozen=True)
class Case:
    kind: str
    name: str
    """Where the case is in the file, as its errors name it: `directional[3]`."""
    texts: tuple[str, ...]
    labels: tuple[str, ...] | None
    """One a text; None (invariance): each must get the label the first text gets."""


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("a blank text")
    return text


Text = Annotated[str, AfterValidator(_not_blank)]


def _a_pair(texts: dict[str, str]) -> dict[str, str]:
    if len(texts) != 2:
        raise ValueError(f"a directional case is two texts, each under its own label, not {len(texts)}")
    return texts


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Invariance(_Section):
    # The i-th variant of a template fills each {slot} with the i-th value of that slot's list.
    fillers: dict[str, Annotated[list[Text], Field(min_length=2)]] = Field(min_length=1)
    templates: list[Text] = Field(min_length=1)


class _CaseFile(_Section):
    minimum_functionality: dict[Label, Annotated[list[Text], Field(min_length=1)]] = Field(min_length=1)
    invariance: _Invariance
    directional: list[Annotated[dict[Label, Text], AfterValidator(_a_pair)]] = Field(min_length=1)


def _read(path: Path) -> _CaseFile:
    return validated(_CaseFile, read_yaml(path), path)


def _variants(path: Path, name: str, template: str, fillers: dict[str, list[str]]) -> tuple[str, ...]:
    """The template filled: the i-th variant with the i-th value of each of its slots' lists."""
    slots = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    if not slots:
        raise FinsentError(f"{path}: {name}: no {{slot}} to swap")
    unknown = sorted(slots - set(fillers))
    if unknown:
        lists = ", ".join(fillers)
        raise FinsentError(f"{path}: {name}: no filler list {unknown[0]!r} (invariance.fillers: {lists})")
    lengths = {len(fillers[slot]) for slot in slots}
    if len(lengths) > 1:
        raise FinsentError(
            f"{path}: {name}: its filler lists ({', '.join(sorted(slots))}) differ in length; "
            "the i-th variant takes the i-th value of each"
        )
    return tuple(
        template.format_map({slot: fillers[slot][i] for slot in slots}) for i in range(lengths.pop())
    )


def load_cases(path: Path) -> list[Case]:
    """The cases of the file at `path`, in its order; a FinsentError naming the case if one is wrong."""
    path = Path(path)
    cases_file = _read(path)
    cases = [
        Case("minimum_functionality", f"minimum_functionality.{label}[{i}]", (text,), (label,))
        for label, texts in cases_file.minimum_functionality.items()
        for i, text in enumerate(texts)
    ]
    fillers = cases_file.invariance.fillers
    for i, template in enumerate(cases_file.invariance.templates):
        name = f"invariance.templates[{i}]"
        cases.append(Case("invariance", name, _variants(path, name, template, fillers), None))
    for i, pair in enumerate(cases_file.directional):
        cases.append(Case("directional", f"directional[{i}]", tuple(pair.values()), tuple(pair)))
    return cases


def score_cases(cases: list[Case], predictor: Predictor) -> tuple[dict[str, float], pd.DataFrame]:
    """Each kind's pass rate and `overall` (cases passed of all cases); and a row for each text of
    each failed case (FAILURE_COLUMNS; an invariance case expects its first variant's label)."""
    texts = [text for case in cases for text in case.texts]
    predicted = np.array(LABELS)[predictor.predict_proba(texts).argmax(axis=1)].tolist()
    passed: dict[str, list[bool]] = {kind: [] for kind in KINDS}
    failures = []
    start = 0
    for case in cases:
        got = predicted[start : start + len(case.texts)]
        start += len(case.texts)
        expected = case.labels or (got[0],) * len(got)
        right = tuple(got) == expected
        passed[case.kind].append(right)
        if not right:
            failures += [(case.kind, case.name, *row) for row in zip(case.texts, expected, got, strict=True)]
    rates = {kind: float(np.mean(results)) for kind, results in passed.items()}
    rates["overall"] = float(np.mean([result for results in passed.values() for result in results]))
    return rates, pd.DataFrame(failures, columns=FAILURE_COLUMNS)
