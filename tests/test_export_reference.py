"""The export's reference model (PyTorch, which the ONNX models are compared with) is not changed by the
export: the int8 model's smoothing works on a copy, so dev probabilities may be computed at any time."""

import numpy as np
import torch
from conftest import PROJECT, tiny_trained_model

from finsent.config import load_params
from finsent.export import write_onnx_models
from finsent.inference.predictors import TorchPredictor

TEXTS = ["$AAPL beats estimates", "Fed holds rates steady as inflation cools", "$TSLA falls", "Oil rallies"]


def test_writing_the_onnx_models_leaves_the_reference_model_as_it_was(tiny_bert_dir, tmp_path):
    reference = TorchPredictor.from_dir(tiny_trained_model(tiny_bert_dir, tmp_path / "model"), batch_size=2)
    before = reference.predict_proba(TEXTS)
    weights = {name: tensor.clone() for name, tensor in reference.model.state_dict().items()}
    params = load_params(PROJECT / "params.yaml").export
    assert params.smoothing_alpha is not None  # the smoothed path, which rescales weights
    (tmp_path / "exported").mkdir()
    write_onnx_models(reference, tmp_path / "exported", TEXTS * 8, params)
    after = reference.model.state_dict()
    assert after.keys() == weights.keys()
    assert all(torch.equal(after[name], tensor) for name, tensor in weights.items())
    np.testing.assert_array_equal(reference.predict_proba(TEXTS), before)
