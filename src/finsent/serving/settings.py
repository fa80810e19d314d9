"""Settings of `finsent-serve` and `finsent-predict`: not pipeline params, so not in `finsent.config`.

Each setting comes from, first to last: a command-line flag, an environment variable
`FINSENT_SERVE_<NAME>` (as a container sets them), the `serve` section of `params.yaml` in the
working directory when there is one, the default below. The serve image has no params.yaml.
"""

from pathlib import Path

from pydantic import Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from ruamel.yaml import YAML, YAMLError

from finsent.config import Backend
from finsent.errors import FinsentError

PARAMS_FILE = Path("params.yaml")
ENV_PREFIX = "FINSENT_SERVE_"


class _ParamsSection(PydanticBaseSettingsSource):
    """The `serve` section of params.yaml in the working directory; nothing without the file or section.

    Read with ruamel.yaml, as the pipeline's params are (YAML 1.2), rather than pydantic-settings' own
    YAML source, which fails on a params.yaml without the section.
    """

    def get_field_value(self, field, field_name):
        return None, field_name, False  # unused: __call__ gives the whole section

    def __call__(self) -> dict:
        try:
            raw = YAML(typ="safe").load(PARAMS_FILE.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (YAMLError, UnicodeDecodeError) as error:
            raise FinsentError(f"{PARAMS_FILE}: not valid YAML ({error.__class__.__name__})") from None
        section = raw.get("serve") if isinstance(raw, dict) else None
        return section if isinstance(section, dict) else {}


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    backend: Backend = "onnx_int8"
    model_dir: Path = Field(Path("models"), description="the train stage's output (pytorch backend)")
    exported_dir: Path = Field(Path("exported"), description="the export stage's output (ONNX backends)")
    batch_size: int = Field(
        32, gt=0, description="texts a model run, at most; the server gathers concurrent requests up to it"
    )
    # Cores one model run of finsent-serve uses; 0: all of them (finsent-predict always uses all): the
    # server runs one model run at a time, and its event loop needs little CPU (docs/speed.md).
    model_threads: int = Field(0, ge=0)
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, lt=65536)
    max_texts: int = Field(64, gt=0, description="texts a request, at most")
    max_text_chars: int = Field(1000, gt=0, description="characters a text, at most")
    batch_window_ms: float = Field(
        3.0, ge=0, description="how long a request waits for others to share its model run (server)"
    )
    max_queued_texts: int = Field(
        256, gt=0, description="texts waiting for the model, at most; a request beyond gets a 503 (server)"
    )
    max_connections: int = Field(
        256, gt=0, description="open connections, at most; a request beyond gets a 503 (server)"
    )
    request_timeout_s: float = Field(
        10.0, gt=0, description="time a client has to send a whole request, headers and body (server)"
    )
    max_header_bytes: int = Field(
        16384, gt=0, description="bytes of a request's line and headers, at most; beyond, a 431 (server)"
    )
    forwarded_allow_ips: str = Field(
        "",
        description="addresses of the proxies whose X-Forwarded-For and X-Forwarded-Proto are believed, "
        "comma-separated; empty: none (server)",
    )
    shutdown_timeout_s: float = Field(
        5.0, gt=0, description="on SIGTERM, time the requests in flight have to be answered (server)"
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

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _ParamsSection(settings_cls)


def load_serve_settings(**flags) -> ServeSettings:
    """The settings, with `flags` (those given on the command line; None: not given) first."""
    try:
        return ServeSettings(**{name: value for name, value in flags.items() if value is not None})
    except ValidationError as error:
        first = error.errors()[0]
        if not first["loc"]:  # a rule over several settings: its message names them
            raise FinsentError(f"serve settings: {first['msg']}") from None
        name = ".".join(str(part) for part in first["loc"])
        raise FinsentError(
            f"serve setting {name} (flag, {ENV_PREFIX}{name.upper()} or params.yaml serve.{name}): "
            f"{first['msg']}"
        ) from None
