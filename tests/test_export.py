import json
import shutil

import numpy as np
import onnx
import pytest
from conftest import SOURCE_ENV, edit_params, run, stage_script

from finsent.config import load_params
from finsent.data import read_jsonl
from finsent.metrics import headline_metrics
from finsent.predictors import ONNX_FILES, OnnxPredictor, TorchPredictor


def test_export_stage_writes_onnx_models_that_agree_with_pytorch(exported_project):
    exported = exported_project / "exported"
    assert {"model.onnx", "model_int8.onnx", "tokenizer.json", "tokenizer_config.json"} <= {
        path.name for path in exported.iterdir()
    }
    for file_name in ONNX_FILES.values():
        onnx.checker.check_model(exported / file_name)
    metrics = json.loads((exported_project / "metrics/export.json").read_text())
    batch_size = load_params(exported_project / "params.yaml").export.batch_size
    validation = read_jsonl(exported_project / "data/raw/validation.jsonl")
    texts, labels = validation["text"].tolist(), validation["label"].to_numpy()
    pytorch = TorchPredictor.from_dir(exported_project / "models", batch_size=64).predict_proba(texts)
    assert metrics["pytorch"] == pytest.approx(headline_metrics(labels, pytorch))

    fp32, int8 = metrics["onnx_fp32"], metrics["onnx_int8"]
    assert fp32["agreement_with_pytorch"] == 1.0
    assert fp32["max_abs_probability_difference"] < 1e-3
    assert fp32["macro_f1"] == pytest.approx(metrics["pytorch"]["macro_f1"])
    assert 0 < int8["agreement_with_pytorch"] < 1  # a random tiny model quantizes badly (see the next test)
    assert int8["file_mb"] < fp32["file_mb"]
    for backend, file_name in ONNX_FILES.items():
        # With the stage's batch size: int8 activations are quantized with one range per batch.
        onnx_probabilities = OnnxPredictor(exported / file_name, batch_size).predict_proba(texts)
        assert metrics[backend]["macro_f1"] == pytest.approx(
            headline_metrics(labels, onnx_probabilities)["macro_f1"]
        )
        np.testing.assert_allclose(onnx_probabilities.sum(axis=1), 1.0, atol=1e-5)
    fp32_batch_of_7 = OnnxPredictor(exported / ONNX_FILES["onnx_fp32"], batch_size=7).predict_proba(texts)
    np.testing.assert_allclose(fp32_batch_of_7, pytorch, atol=1e-3)


def test_export_compares_the_runtimes_on_dev_too(exported_project):
    metrics = json.loads((exported_project / "metrics/export.json").read_text())
    batch_size = load_params(exported_project / "params.yaml").export.batch_size
    dev_texts = read_jsonl(exported_project / "data/raw/dev.jsonl")["text"].tolist()
    pytorch = TorchPredictor.from_dir(exported_project / "models", batch_size).predict_proba(dev_texts)
    for backend, file_name in ONNX_FILES.items():
        probabilities = OnnxPredictor(exported_project / "exported" / file_name, batch_size).predict_proba(
            dev_texts
        )
        difference = np.abs(probabilities - pytorch)
        assert metrics[backend]["dev"] == pytest.approx(
            {
                "agreement_with_pytorch": (probabilities.argmax(axis=1) == pytorch.argmax(axis=1)).mean(),
                "max_abs_probability_difference": difference.max(),
                "mean_abs_probability_difference": difference.mean(),
            },
            abs=1e-6,
        )
    assert metrics["onnx_int8"]["dev"]["mean_abs_probability_difference"] > 1e-3  # int8 does differ


def export_beside(exported_project, folder, **param_changes):
    """The export stage in `folder`, on `exported_project`'s model and data, with changed params."""
    shutil.copy(exported_project / "params.yaml", folder / "params.yaml")
    for name in ("models", "data"):
        (folder / name).symlink_to(exported_project / name)
    edit_params(folder, **param_changes)
    splits = [f"data/raw/{split}.jsonl" for split in ("validation", "dev", "train")]
    return run(
        [*stage_script("export.py"), "models", *splits, "exported", "export.json"],
        cwd=folder,
        env=SOURCE_ENV,
        check=False,
    )


def smoothing_scales(onnx_file) -> list[str]:
    return [init.name for init in onnx.load(onnx_file).graph.initializer if "inverse_scale" in init.name]


def test_int8_is_quantized_from_the_smoothed_model_unless_alpha_is_null(exported_project, tmp_path):
    exported = exported_project / "exported"
    assert smoothing_scales(exported / ONNX_FILES["onnx_fp32"]) == []
    # Every linear layer: 6 in each of the 2 blocks, the pooler and the classifier.
    assert len(smoothing_scales(exported / ONNX_FILES["onnx_int8"])) == 6 * 2 + 2
    assert "smoothed_fp32.onnx" not in {path.name for path in exported.iterdir()}

    assert export_beside(exported_project, tmp_path, export__smoothing_alpha=None).returncode == 0
    assert smoothing_scales(tmp_path / "exported" / ONNX_FILES["onnx_int8"]) == []


def test_export_below_the_agreement_threshold_fails_and_writes_nothing(exported_project, tmp_path):
    result = export_beside(exported_project, tmp_path, export__min_agreement__onnx_int8=1.0)
    agreement = json.loads((exported_project / "metrics/export.json").read_text())["onnx_int8"][
        "agreement_with_pytorch"
    ]
    assert result.returncode == 1
    assert result.stderr.endswith(
        f"error: export.min_agreement.onnx_int8: the onnx_int8 model gives PyTorch's label on "
        f"{agreement:.2%} of the validation texts, under the 100.00% asked\n"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data", "models", "params.yaml"]


def test_export_without_a_model_fails_and_keeps_the_previous_export(exported_project, tmp_path):
    (tmp_path / "params.yaml").write_text((exported_project / "params.yaml").read_text())
    (tmp_path / "exported").mkdir()
    (tmp_path / "exported" / "model.onnx").write_text("the previous export")
    result = run(
        [
            *stage_script("export.py"),
            "models",
            str(exported_project / "data/raw/validation.jsonl"),
            str(exported_project / "data/raw/dev.jsonl"),
            str(exported_project / "data/raw/train.jsonl"),
            "exported",
            "m.json",
        ],
        cwd=tmp_path,
        env=SOURCE_ENV,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr == "error: models: no trained model here (base/config.json is missing)\n"
    assert (tmp_path / "exported" / "model.onnx").read_text() == "the previous export"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exported", "params.yaml"]
