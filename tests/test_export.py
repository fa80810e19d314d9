import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import (
    PROJECT,
    SOURCE_ENV,
    TINY_TEMPERATURE,
    edit_params,
    run,
    served_predictor,
    stage_here,
    stage_script,
    tiny_checkpoint,
    tiny_trained_model,
)
from scipy.special import softmax

from finsent.config import MinAgreement, load_params
from finsent.data import SOURCE_FILES, read_jsonl, read_source_csv, to_jsonl
from finsent.errors import FinsentError
from finsent.export import GATES, check_agreement, reference_probabilities
from finsent.inference.predictors import FP32_FILE, INT8_FILES, OnnxPredictor, TorchPredictor, load_predictor
from finsent.metrics import expected_calibration_error, headline_metrics, predictions_table
from finsent.temperature import CALIBRATION_FILE

SPLITS = [f"data/raw/{split}.jsonl" for split in ("validation", "dev", "train")]
PREDICTIONS = "plots/predictions.csv"


def beyond_progress(stderr: str) -> list[str]:
    """The export stage's stderr lines other than its progress lines (`export: <step>`)."""
    return [line for line in stderr.splitlines() if not line.startswith("export: ")]


def export_stage(project, check=False):
    """The export stage, run in `project` as dvc.yaml runs it."""
    return run(
        [*stage_script("export.py"), "models", PREDICTIONS, *SPLITS, "exported", "metrics/export.json"],
        cwd=project,
        env=SOURCE_ENV,
        check=check,
    )


def test_export_stage_writes_onnx_models_that_agree_with_pytorch(exported_project):
    exported = exported_project / "exported"
    assert {
        "model.onnx",
        "model_int8.onnx",
        "model_int8_u8.onnx",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= {path.name for path in exported.iterdir()}
    for file_name in (FP32_FILE, *INT8_FILES.values()):
        onnx.checker.check_model(exported / file_name)
    metrics = json.loads((exported_project / "metrics/export.json").read_text())
    batch_size = load_params(exported_project / "params.yaml").export.batch_size
    assert batch_size == 32
    validation = read_jsonl(exported_project / "data/raw/validation.jsonl")
    texts, labels = validation["text"].tolist(), validation["label"].to_numpy()
    pytorch = TorchPredictor.from_dir(exported_project / "models", batch_size=64).predict_proba(texts)
    # The reference is the evaluate stage's: its metrics, from its predictions (6 decimals).
    assert metrics["pytorch"] == pytest.approx(headline_metrics(labels, pytorch), rel=1e-4)
    evaluated = json.loads((exported_project / "metrics/validation.json").read_text())
    assert metrics["pytorch"]["macro_f1"] == pytest.approx(evaluated["macro_f1"])

    fp32, int8 = metrics["onnx_fp32"], metrics["onnx_int8"]
    assert set(fp32) == {"runtime", "file", "file_mb", "batch_32"}  # the same function in fp32: padded
    assert set(int8) == {"runtime", "file", "file_mb", "batch_1", "batch_32", "dev"}
    assert (int8["runtime"], int8["file"]) == ("openvino", "model_int8.onnx")  # as served where installed
    on_onnxruntime = {"onnx_int8_onnxruntime": "model_int8.onnx", "onnx_int8_unsigned": "model_int8_u8.onnx"}
    for name, file_name in on_onnxruntime.items():
        assert (metrics[name]["runtime"], metrics[name]["file"]) == ("onnxruntime", file_name)
        assert set(metrics[name]) == {"runtime", "file", "file_mb", "batch_32"}
    assert fp32["batch_32"]["agreement_with_pytorch"] == 1.0
    assert fp32["batch_32"]["max_abs_probability_difference"] < 1e-3
    assert fp32["batch_32"]["macro_f1"] == pytest.approx(metrics["pytorch"]["macro_f1"])
    for batch in ("batch_1", "batch_32"):
        assert 0 < int8[batch]["agreement_with_pytorch"] < 1  # a random tiny model quantizes badly
    runs = {
        "onnx_fp32": lambda size: OnnxPredictor(exported / FP32_FILE, size),
        "onnx_int8": lambda size: load_predictor("onnx_int8", "models", exported, size),
        "onnx_int8_onnxruntime": lambda size: OnnxPredictor(exported / INT8_FILES["signed"], size),
        "onnx_int8_unsigned": lambda size: OnnxPredictor(exported / INT8_FILES["unsigned"], size),
    }
    sizes = {name: [batch_size] for name in runs} | {"onnx_int8": [1, batch_size]}
    for name, make in runs.items():
        for size in sizes[name]:
            probabilities = make(size).predict_proba(texts)
            recorded = metrics[name][f"batch_{size}"]
            assert recorded["macro_f1"] == pytest.approx(headline_metrics(labels, probabilities)["macro_f1"])
            assert recorded["agreement_with_pytorch"] == pytest.approx(
                (probabilities.argmax(axis=1) == pytorch.argmax(axis=1)).mean()
            )
            np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_export_carries_the_temperature_and_onnx_applies_it_as_pytorch_does(exported_project):
    exported, models = exported_project / "exported", exported_project / "models"
    assert (exported / CALIBRATION_FILE).read_bytes() == (models / CALIBRATION_FILE).read_bytes()
    validation = read_jsonl(exported_project / "data/raw/validation.jsonl")
    texts, labels = validation["text"].tolist(), validation["label"].to_numpy()
    pytorch = TorchPredictor.from_dir(models, batch_size=64).predict_proba(texts)
    fp32 = OnnxPredictor(exported / FP32_FILE, 64)
    np.testing.assert_allclose(fp32.predict_proba(texts), pytorch, atol=5e-4, rtol=0)
    logits = fp32.batch_logits(fp32.normalize(texts[:8]))
    np.testing.assert_allclose(
        fp32.predict_proba(texts[:8]), softmax(logits / TINY_TEMPERATURE, axis=1), atol=1e-5, rtol=0
    )
    # The int8 model as served: its calibration error on validation, alone and in batches.
    metrics = json.loads((exported_project / "metrics/export.json").read_text())["onnx_int8"]
    for size in (1, 32):
        int8 = load_predictor("onnx_int8", models, exported, size).predict_proba(texts)
        assert metrics[f"batch_{size}"]["expected_calibration_error"] == pytest.approx(
            expected_calibration_error(labels, int8), abs=1e-6
        )


def test_int8_gives_each_validation_text_the_same_probabilities_in_any_batch(exported_project):
    metrics = json.loads((exported_project / "metrics/export.json").read_text())
    texts = read_jsonl(exported_project / "data/raw/validation.jsonl")["text"].tolist()
    exported = exported_project / "exported"
    for runtime in ("openvino", "onnxruntime"):
        alone = load_predictor("onnx_int8", "models", exported, 1, runtime=runtime).predict_proba(texts)
        for batch_size in (7, 32, 200):  # 200: every text in one batch, padded to the longest
            predictor = load_predictor("onnx_int8", "models", exported, batch_size, runtime=runtime)
            assert np.abs(predictor.predict_proba(texts) - alone).max() < 1e-6, (runtime, batch_size)
    assert metrics["onnx_int8"]["batch_32"]["labels_differing_from_batch_1"] == 0


def test_export_compares_int8_on_dev_too(exported_project):
    metrics = json.loads((exported_project / "metrics/export.json").read_text())
    batch_size = load_params(exported_project / "params.yaml").export.batch_size
    dev_texts = read_jsonl(exported_project / "data/raw/dev.jsonl")["text"].tolist()
    pytorch = TorchPredictor.from_dir(exported_project / "models", batch_size).predict_proba(dev_texts)
    # Each text alone, as the API sees one.
    probabilities = served_predictor(exported_project / "exported", "onnx_int8", 1).predict_proba(dev_texts)
    difference = np.abs(probabilities - pytorch)
    assert metrics["onnx_int8"]["dev"] == pytest.approx(
        {
            "agreement_with_pytorch": (probabilities.argmax(axis=1) == pytorch.argmax(axis=1)).mean(),
            "max_abs_probability_difference": difference.max(),
            "mean_abs_probability_difference": difference.mean(),
        },
        abs=1e-6,
    )
    assert metrics["onnx_int8"]["dev"]["mean_abs_probability_difference"] > 1e-3  # int8 does differ


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_torch_predictor_merges_lora_into_the_encoder_with_the_same_outputs(exported_project):
    from peft import PeftModel

    from finsent.modeling import load_classifier

    texts = read_jsonl(exported_project / "data/raw/validation.jsonl")["text"].tolist()[:40]
    predictor = TorchPredictor.from_dir(exported_project / "models", 8)
    assert not isinstance(predictor.model, PeftModel)
    assert not any("lora" in name for name, _ in predictor.model.named_parameters())
    unmerged, _, _, _ = load_classifier(exported_project / "models")
    assert isinstance(unmerged, PeftModel)
    unmerged_predictor = TorchPredictor(
        unmerged, predictor.tokenizer, 8, predictor.normalize, predictor.temperature
    )
    np.testing.assert_allclose(
        predictor.predict_proba(texts), unmerged_predictor.predict_proba(texts), atol=1e-4
    )


def export_beside(exported_project, folder, **param_changes):
    """The export stage in `folder`, on `exported_project`'s model and data, with changed params."""
    shutil.copy(exported_project / "params.yaml", folder / "params.yaml")
    for name in ("models", "data", "plots"):
        (folder / name).symlink_to(exported_project / name)
    edit_params(folder, **param_changes)
    return export_stage(folder)


def smoothing_scales(onnx_file) -> list[str]:
    return [init.name for init in onnx.load(onnx_file).graph.initializer if "inverse_scale" in init.name]


def test_int8_is_quantized_from_the_smoothed_model_unless_alpha_is_null(exported_project, tmp_path):
    exported = exported_project / "exported"
    assert smoothing_scales(exported / FP32_FILE) == []
    # Every linear layer: 6 in each of the 2 blocks, the pooler and the classifier.
    assert len(smoothing_scales(exported / INT8_FILES["signed"])) == 6 * 2 + 2
    assert "smoothed_fp32.onnx" not in {path.name for path in exported.iterdir()}

    result = export_beside(exported_project, tmp_path, export__smoothing_alpha=None)
    assert result.returncode == 0
    assert beyond_progress(result.stderr) == []  # no warning from tracing, quantizing or loading the model
    assert smoothing_scales(tmp_path / "exported" / INT8_FILES["signed"]) == []


def test_export_below_the_agreement_threshold_fails_and_writes_nothing(exported_project, tmp_path):
    result = export_beside(exported_project, tmp_path, export__min_agreement__onnx_int8=1.0)
    agreement = json.loads((exported_project / "metrics/export.json").read_text())["onnx_int8"]["batch_1"][
        "agreement_with_pytorch"
    ]
    assert result.returncode == 1
    assert beyond_progress(result.stderr) == [
        f"error: export.min_agreement.onnx_int8: in batches of 1, the onnx_int8 model gives PyTorch's "
        f"label on {agreement:.2%} of the validation texts, under the 100.00% asked"
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "models", "params.yaml", "plots"]


def export_over_previous(folder, exported_project, model_dir, predictions):
    """The export stage in `folder`, which holds an earlier export and the project's params, on
    `model_dir`, `predictions` and `exported_project`'s splits (metrics to m.json)."""
    shutil.copy(exported_project / "params.yaml", folder / "params.yaml")
    (folder / "exported").mkdir()
    (folder / "exported" / "model.onnx").write_text("the previous export")
    splits = (str(exported_project / split) for split in SPLITS)
    return stage_here(
        "export.py", str(model_dir), str(predictions), *splits, "exported", "m.json", cwd=folder
    )


def test_export_without_a_model_fails_and_keeps_the_previous_export(exported_project, tmp_path):
    result = export_over_previous(tmp_path, exported_project, "models", exported_project / PREDICTIONS)
    assert result.returncode == 1
    assert result.stderr == "error: models: no trained model here (base/config.json is missing)\n"
    assert (tmp_path / "exported" / "model.onnx").read_text() == "the previous export"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exported", "params.yaml"]


def gate_metrics(agreements: dict[str, dict[int, float]]) -> dict:
    return {
        backend: {f"batch_{size}": {"agreement_with_pytorch": value} for size, value in by_size.items()}
        for backend, by_size in agreements.items()
    }


@pytest.mark.parametrize(
    ("backend", "failing_size", "message"),
    [
        ("onnx_int8", 32, "export.min_agreement.onnx_int8: in batches of 32, the onnx_int8 model gives "),
        ("onnx_fp32", 32, "export.min_agreement.onnx_fp32: in batches of 32, the onnx_fp32 model gives "),
        ("onnx_int8", 1, "export.min_agreement.onnx_int8: in batches of 1, the onnx_int8 model gives "),
        (
            "onnx_int8_unsigned",
            32,
            "export.min_agreement.onnx_int8: in batches of 32, the onnx_int8_unsigned model gives ",
        ),
    ],
)
def test_agreement_gate_applies_at_each_batch_size(backend, failing_size, message):
    minimum = MinAgreement(onnx_fp32=0.995, onnx_int8=0.99)
    agreements = {name: {1: 1.0, 32: 1.0} for name in GATES}
    sizes = {name: [1, 32] for name in GATES}
    check_agreement(gate_metrics(agreements), sizes, minimum)
    agreements[backend][failing_size] = 0.9
    with pytest.raises(FinsentError) as raised:
        check_agreement(gate_metrics(agreements), sizes, minimum)
    asked = getattr(minimum, GATES[backend])
    assert str(raised.value) == (
        f"{message}PyTorch's label on 90.00% of the validation texts, under the {asked:.2%} asked"
    )


@pytest.mark.parametrize("architecture", ["mpnet", "deberta-v2"])
def test_export_stage_exports_other_encoders_quietly(tmp_path, small_mirror, architecture):
    # MPNet (the teacher's architecture) has no token_type_ids, nor has this DeBERTa-v2 (no token types).
    project = tmp_path / "project"
    (project / "data" / "raw").mkdir(parents=True)
    shutil.copy(PROJECT / "params.yaml", project / "params.yaml")
    edit_params(project, export__calibration_texts=64, export__min_agreement__onnx_int8=0.01)
    train = read_source_csv(small_mirror / SOURCE_FILES["train"])
    validation = train.groupby("label").head(15)  # every class: F-scores are defined
    rest = train.drop(validation.index)
    splits = {"validation": validation, "dev": rest.iloc[:20], "train": rest.iloc[20:]}
    for split, frame in splits.items():
        (project / "data" / "raw" / f"{split}.jsonl").write_bytes(to_jsonl(frame))
    tiny_trained_model(tiny_checkpoint(tmp_path / "checkpoint", architecture), project / "models")
    # The evaluate stage's table of validation probabilities, the export's reference, made as it makes it.
    probabilities = TorchPredictor.from_dir(project / "models", 32).predict_proba(validation["text"].tolist())
    (project / "plots").mkdir()
    predictions_table(validation["id"], validation["label"].to_numpy(), probabilities).to_csv(
        project / PREDICTIONS, index=False
    )

    result = export_stage(project)
    assert result.returncode == 0, result.stderr
    assert beyond_progress(result.stderr) == []
    metrics = json.loads((project / "metrics/export.json").read_text())
    for file_name in (FP32_FILE, *INT8_FILES.values()):
        inputs = [node.name for node in onnx.load(project / "exported" / file_name).graph.input]
        assert inputs == ["input_ids", "attention_mask"]
    assert metrics["onnx_int8"]["batch_32"]["labels_differing_from_batch_1"] == 0
    assert metrics["onnx_fp32"]["batch_32"]["agreement_with_pytorch"] == 1.0


def bad_predictions(original: str, content: str | None, path):
    """`path` written as evaluate's predictions table `original` spoiled as `content` says (None: no file)."""
    lines = original.splitlines(keepends=True)
    spoiled = {
        "reorder": lines[0] + lines[2] + lines[1] + "".join(lines[3:]),
        "drop": "".join(lines[:-1]),
        "nan": lines[0] + lines[1].rsplit(",", 1)[0] + ",nan\n" + "".join(lines[2:]),
        "ragged": lines[0] + lines[1].rstrip("\n") + ",\n" + "".join(lines[2:]),
    }
    if content is not None:
        path.write_text(spoiled.get(content, content))
    return path


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file (run `dvc repro evaluate`)"),
        ("", "empty, not even a header"),
        ("ragged", "line 2: field count 7, the header's 6"),
        ("id,p_Bearish,p_Bullish\n", "no column p_Neutral (run `dvc repro evaluate`)"),
        ("reorder", "its rows are not the validation split's, in its order ({n} rows against {n}; run "),
        ("drop", "its rows are not the validation split's, in its order ({m} rows against {n}; run "),
        ("nan", "a probability is missing or not a number (run `dvc repro evaluate`)"),
    ],
)
def test_predictions_that_are_not_evaluates_on_validation_are_refused_naming_the_file(
    exported_project, tmp_path, content, problem
):
    validation = read_jsonl(exported_project / "data/raw/validation.jsonl")
    original = (exported_project / PREDICTIONS).read_text()
    predictions = bad_predictions(original, content, tmp_path / "predictions.csv")
    with pytest.raises(FinsentError) as raised:
        reference_probabilities(predictions, validation)
    message = problem.format(n=len(validation), m=len(validation) - 1)
    assert str(raised.value).startswith(f"{predictions}: {message}")


def test_export_with_rows_out_of_order_stops_on_one_line_and_keeps_the_previous_export(
    exported_project, tmp_path
):
    # The evaluate stage's table is the reference: another must stop the stage before it exports.
    original = (exported_project / PREDICTIONS).read_text()
    predictions = bad_predictions(original, "reorder", tmp_path / "predictions.csv")
    result = export_over_previous(tmp_path, exported_project, exported_project / "models", predictions)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {predictions}: its rows are not the validation split's")
    assert result.stderr.count("\n") == 1
    assert (tmp_path / "exported" / "model.onnx").read_text() == "the previous export"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exported", "params.yaml", "predictions.csv"]
