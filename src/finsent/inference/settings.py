"""Settings of the commands that run a trained model (`finsent-predict`, `finsent-serve`,
`finsent-score`): not pipeline params, so not in `finsent.config`.

Each setting comes from, first to last: a command-line flag, an environment variable (as a container
sets them), a section of `params.yaml` in the working directory when there is one, the default. Which
model and runtime (`PredictorSettings`: env `FINSENT_<NAME>`, section `inference`) is shared by the
three commands; each command's own knobs are its own (the server's: `finsent.inference.api.settings`).
"""

from pathlib import Path
from typing import ClassVar, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from ruamel.yaml import YAML, YAMLError

from finsent.config import Backend
from finsent.errors import FinsentError
from finsent.inference.predictors import Int8Weights, Predictor, Runtime, load_predictor

PARAMS_FILE = Path("params.yaml")

SettingsT = TypeVar("SettingsT", bound="SectionSettings")


class _ParamsSection(PydanticBaseSettingsSource):
    """The settings class's section of params.yaml in the working directory; nothing without the file
    or section.

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
        section = raw.get(self.settings_cls.params_section) if isinstance(raw, dict) else None
        return section if isinstance(section, dict) else {}


class SectionSettings(BaseSettings):
    """Settings read from flags, `env_prefix` variables and the `params_section` of params.yaml."""

    params_section: ClassVar[str] = ""

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


class PredictorSettings(SectionSettings):
    """Which model, on which runtime: what the predict command, the server and bulk scoring share."""

    model_config = SettingsConfigDict(env_prefix="FINSENT_", extra="ignore", frozen=True)
    params_section: ClassVar[str] = "inference"

    backend: Backend = "onnx_int8"
    model_dir: Path = Field(Path("models"), description="the train stage's output (pytorch backend)")
    exported_dir: Path = Field(Path("exported"), description="the export stage's output (ONNX backends)")
    batch_size: int = Field(32, gt=0, description="texts a model run, at most")
    runtime: Runtime = Field(
        "auto", description="what runs the exported models (auto: OpenVINO where installed)"
    )
    int8_weights: Int8Weights = Field(
        "auto",
        description="the int8 model's weights: signed where the CPU has VNNI or AMX, else unsigned (auto)",
    )

    def load(self, threads: int = 0) -> Predictor:
        """The predictor these settings name, on the CPU, its model runs on `threads` cores (0: all)."""
        return load_predictor(
            self.backend,
            self.model_dir,
            self.exported_dir,
            self.batch_size,
            threads,
            int8_weights=self.int8_weights,
            runtime=self.runtime,
        )


def load_settings(cls: type[SettingsT], **flags) -> SettingsT:
    """`cls`'s settings, with `flags` (those given on the command line; None: not given) first."""
    try:
        return cls(**{name: value for name, value in flags.items() if value is not None})
    except ValidationError as error:
        first = error.errors()[0]
        if not first["loc"]:  # a rule over several settings: its message names them
            raise FinsentError(f"{cls.params_section} settings: {first['msg']}") from None
        name = ".".join(str(part) for part in first["loc"])
        variable = f"{cls.model_config['env_prefix']}{name.upper()}"
        raise FinsentError(
            f"setting {name} (flag, {variable} or params.yaml {cls.params_section}.{name}): {first['msg']}"
        ) from None
