"""The HTTP API's own settings (`finsent-serve`): env `FINSENT_SERVE_<NAME>`, section `serve` of
params.yaml. Which model it serves is `finsent.inference.settings.PredictorSettings`."""

from typing import ClassVar, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import SettingsConfigDict

from finsent.inference.settings import SectionSettings


class ServeSettings(SectionSettings):
    model_config = SettingsConfigDict(env_prefix="FINSENT_SERVE_", extra="forbid", frozen=True)
    params_section: ClassVar[str] = "serve"

    # Cores one model run uses; 0: all of them. The server runs one model run at a time, and its event
    # loop needs little CPU (docs/speed.md).
    model_threads: int = Field(0, ge=0)
    front: Literal["none", "nginx"] = Field(
        "none",
        description="nginx: nginx listens on host and port and passes requests to the API on a socket of "
        "its own, enforcing the limits on headers, time and connections; none: the API alone",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, lt=65536)
    max_texts: int = Field(64, gt=0, description="texts a request, at most")
    max_text_chars: int = Field(1000, gt=0, description="characters a text, at most")
    batch_window_ms: float = Field(
        3.0, ge=0, description="how long a request waits for others to share its model run"
    )
    max_queued_texts: int = Field(
        256, gt=0, description="texts waiting for the model, at most; a request beyond gets a 503"
    )
    max_connections: int = Field(
        256, gt=0, description="requests in progress at once, at most; a request beyond gets a 503 (front)"
    )
    request_timeout_s: float = Field(
        10.0,
        gt=0,
        description="time a client has to send a request's headers (front), then its body; an idle "
        "connection is closed after it too (front)",
    )
    max_header_bytes: int = Field(
        16384,
        gt=0,
        description="bytes of a request's line and headers past the first kilobyte, at most; beyond, a "
        "431, or a 414 for the request line (front)",
    )
    forwarded_allow_ips: str = Field(
        "",
        description="addresses of the proxies whose X-Forwarded-For and X-Forwarded-Proto are believed, "
        "comma-separated; empty: none",
    )
    shutdown_timeout_s: float = Field(
        5.0, gt=0, description="on SIGTERM, time the requests in flight have to be answered"
    )

    @model_validator(mode="after")
    def _one_request_fits_the_queue(self) -> "ServeSettings":
        # Otherwise a request of more than max_queued_texts texts is valid yet always refused as overload.
        if self.max_texts > self.max_queued_texts:
            raise PydanticCustomError(
                "limits_disagree",
                "max_texts ({max_texts}) is over max_queued_texts ({max_queued_texts}): a request of more "
                "than max_queued_texts texts would always get a 503",
                {"max_texts": self.max_texts, "max_queued_texts": self.max_queued_texts},
            )
        return self

    @property
    def max_body_bytes(self) -> int:
        """The largest body a valid request can have: every character escaped as a surrogate pair."""
        return self.max_texts * (12 * self.max_text_chars + 8) + 1024

    @property
    def max_body_values(self) -> int:
        """The most bytes that open or separate JSON values (`[{,:`) a valid body can have, counted
        inside strings too: every character of every text could be one; 64 for the rest."""
        return self.max_texts * (self.max_text_chars + 1) + 64
