"""The HTTP API's request and response bodies (and so its OpenAPI schema)."""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, create_model

from finsent.config import Backend, Label


class Prediction(BaseModel):
    label: Label = Field(description="the most probable class")
    probabilities: dict[Label, float] = Field(description="each class's probability; they sum to 1")


class PredictResponse(BaseModel):
    predictions: list[Prediction] = Field(description="one per text, in the order of the request")
    backend: Backend
    model_version: str | None = Field(
        description="md5 that dvc.lock records for the model folder; null when the folder does not match it"
    )


class ModelStatus(BaseModel):
    status: Literal["ready"]
    backend: Backend
    model_version: str | None


def predict_request(max_texts: int, max_text_chars: int) -> type[BaseModel]:
    """The body of POST /v1/predict, with the limits of params.yaml `serve` in its schema."""
    text = Annotated[StrictStr, Field(max_length=max_text_chars)]
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        texts=(
            list[text],
            Field(
                min_length=1,
                max_length=max_texts,
                description=f"1 to {max_texts} texts of at most {max_text_chars} characters each",
                examples=[["$AAPL beats estimates, shares up 5%", "Fed holds rates steady"]],
            ),
        ),
    )
