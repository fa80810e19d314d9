"""The HTTP API's request and response bodies (and so its OpenAPI schema)."""

from typing import Annotated, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, create_model, model_validator
from pydantic_core import PydanticCustomError

from finsent.config import LABELS, Backend, Label
from finsent.text import first_blank

MODEL_VERSION = "the first 16 hex digits of a SHA-256 over the files of the folder that the backend reads"
NOT_ONLY_WHITESPACE = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""A JSON Schema pattern (ECMA-262, which Python's re reads alike) that a text matches when it holds a
character that is not whitespace as Python's `str.isspace` (and so `finsent.text.first_blank`) counts
it; JSON Schema's own \\S counts otherwise (U+FEFF is whitespace to it, U+001C not)."""
# A request has one field; a few more (a misnamed one) get an error each. Past this, one error for all:
# each error costs validation time on the event loop, and a body within the size limit can hold tens
# of thousands of fields.
MAX_FIELDS = 10


PROBABILITY_DECIMALS = 6
"""Decimals of a probability in an answer. The models compute in float32, good to about 7 significant
digits: printed in full as a Python float, 0.9 in float32 reads 0.8999999761581421."""


def class_probabilities(row: np.ndarray) -> dict[str, float]:
    """One text's class probabilities as answers give them: by label, rounded to PROBABILITY_DECIMALS."""
    return dict(zip(LABELS, row.astype(np.float64).round(PROBABILITY_DECIMALS).tolist(), strict=True))


class Prediction(BaseModel):
    label: Label = Field(description="the most probable class")
    probabilities: dict[Label, float] = Field(description="each class's probability; they sum to 1")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="one per text, in the order of the request")
    backend: Backend
    model_version: str = Field(description=MODEL_VERSION)


class ModelStatus(BaseModel):
    status: Literal["ready"]
    backend: Backend
    model_version: str = Field(description=MODEL_VERSION)


class ErrorDetail(BaseModel):
    loc: list[str | int] = Field(description='where: "body", then the field and the index of the text')
    msg: str
    type: str


class ValidationErrors(BaseModel):
    """A 422: what is wrong with the request and where, never the input itself."""

    detail: list[ErrorDetail] = Field(description="the first errors found, at most 10")


class ErrorMessage(BaseModel):
    detail: str


def not_blank(text: str) -> str:
    """The pipeline's rule (`finsent.text.first_blank`): a text with nothing but whitespace is refused."""
    if first_blank([text]) is not None:
        raise PydanticCustomError("blank_text", "Text is empty or only whitespace")
    return text


def at_most_max_fields(cls, body: object) -> object:
    """The parsed body, unless it is an object of more than MAX_FIELDS fields."""
    if isinstance(body, dict) and len(body) > MAX_FIELDS:
        raise PydanticCustomError(
            "too_many_fields",
            "Object should have at most {max_fields} fields, not {fields}",
            {"max_fields": MAX_FIELDS, "fields": len(body)},
        )
    return body


def predict_request(max_texts: int, max_text_chars: int) -> type[BaseModel]:
    """The body of POST /v1/predict, with the limits of the serve settings in its schema."""
    # The schema states the blank rule too, so that a text it calls valid is one the API takes; the
    # check itself is not_blank's, whose message says what is wrong rather than quoting a pattern.
    text_schema = {"minLength": 1, "pattern": NOT_ONLY_WHITESPACE}
    text = Annotated[
        StrictStr, Field(max_length=max_text_chars, json_schema_extra=text_schema), AfterValidator(not_blank)
    ]
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        __validators__={"at_most_max_fields": model_validator(mode="before")(at_most_max_fields)},
        texts=(
            list[text],
            Field(
                min_length=1,
                max_length=max_texts,
                description=f"1 to {max_texts} texts of 1 to {max_text_chars} characters each, "
                "not only whitespace",
                examples=[["$AAPL beats estimates, shares up 5%", "Fed holds rates steady"]],
            ),
        ),
    )
