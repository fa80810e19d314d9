import itertools
import shutil

import pytest
from conftest import PROJECT, run
from dvc.utils.hydra import apply_overrides
from ruamel.yaml import YAML

from finsent.config import load_params
from finsent.errors import FinsentError
from finsent.experiments.presets import override, preset_values
from finsent.experiments.sweep_summary import flatten


def preset_words(name: str, cwd=PROJECT) -> list[str]:
    return run(["finsent-preset", name], cwd=cwd).stdout.split()


def test_the_fast_preset_is_the_minilm_student_distilled():
    assert preset_words("fast") == [
        "-S", "model.checkpoint=sentence-transformers/all-MiniLM-L6-v2",
        "-S", "train.learning_rate=0.001",
        "-S", "train.epochs=3",
        "-S", "distill.enabled=true",
    ]  # fmt: skip
    assert preset_values("minilm", PROJECT / "presets", PROJECT / "params.yaml") == {
        "model.checkpoint": "sentence-transformers/all-MiniLM-L6-v2",
        "train.learning_rate": 0.001,
        "train.epochs": 3,
        "distill.enabled": False,
    }


@pytest.mark.parametrize("name", ["fast", "minilm"])
def test_dvc_applies_a_preset_to_params_yaml_and_a_later_key_wins(tmp_path, name):
    # DVC's own code for `dvc exp run -S`, on a copy of params.yaml: the values land, comments stay.
    params = tmp_path / "params.yaml"
    shutil.copy(PROJECT / "params.yaml", params)
    words = preset_words(name)
    apply_overrides(str(params), [*words[1::2], "train.epochs=2"])
    loaded = load_params(params)
    assert loaded.model.checkpoint == "sentence-transformers/all-MiniLM-L6-v2"
    assert loaded.train.learning_rate == 0.001
    assert loaded.train.epochs == 2
    assert loaded.distill.enabled is (name == "fast")
    assert "# Every knob of the pipeline" in params.read_text()


def test_overrides_are_single_words_in_hydras_grammar():
    assert override("lora.target_modules", ["query", "value"]) == "lora.target_modules=[query,value]"
    assert override("tokenize.cashtag_replacement", None) == "tokenize.cashtag_replacement=null"
    assert override("distill.enabled", False) == "distill.enabled=false"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("nope", None, "presets/nope.yaml: no such preset (presets: fast, minilm)"),
        (
            "typo",
            "train:\n  learning_rat: 1\n",
            "presets/typo.yaml: train.learning_rat: not a key of params.yaml",
        ),
        ("empty", "", "presets/empty.yaml: not a mapping of params.yaml sections to values"),
        ("broken", "train: [\n", "presets/broken.yaml, line 2: expected the node content"),
    ],
)
def test_a_bad_preset_is_one_line(tmp_path, name, content, message):
    shutil.copytree(PROJECT / "presets", tmp_path / "presets")
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    if content is not None:
        (tmp_path / "presets" / f"{name}.yaml").write_text(content)
        message = message.replace("(presets: fast, minilm)", "")
    result = run(["finsent-preset", name], cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {message}")
    assert result.stderr.count("\n") == 1
    with pytest.raises(FinsentError):
        preset_values(name, tmp_path / "presets", tmp_path / "params.yaml")


def test_every_sweep_line_names_an_existing_preset_and_params_keys():
    keys = set(flatten(YAML(typ="safe").load((PROJECT / "params.yaml").read_text())))
    presets = {path.stem for path in (PROJECT / "presets").glob("*.yaml")}
    for sweep in sorted((PROJECT / "sweeps").glob("*.txt")):
        for line in sweep.read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            words = line.split()[1:]
            named = [word.removeprefix("preset=") for word in words if word.startswith("preset=")]
            assert set(named) <= presets, f"{sweep.name}: {line}"
            set_keys = [
                word.split("=")[0] for previous, word in itertools.pairwise(words) if previous == "-S"
            ]
            assert set(set_keys) <= keys, f"{sweep.name}: {line}"
