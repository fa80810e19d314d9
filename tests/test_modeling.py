import json
import shutil

import numpy as np
import pytest
import torch
from conftest import (
    BEHAVIOUR_CASES,
    PROJECT,
    TINY_TEMPERATURE,
    stage_here,
    tiny_checkpoint,
    tiny_trained_model,
)
from scipy.special import softmax
from transformers import AutoTokenizer

from finsent.config import LABELS, LoraParams
from finsent.errors import FinsentError
from finsent.inference.predictors import TorchPredictor
from finsent.modeling import (
    checkpoint_with_layers,
    kept_layers,
    load_base_model,
    load_classifier,
    save_classifier,
    with_lora,
)
from finsent.temperature import CALIBRATION_FILE
from finsent.text import NORMALIZATION_FILE, TextNormalization

LORA = LoraParams(enabled=True, r=4, alpha=8, dropout=0.0, target_modules="auto")
EXPECTED_TARGETS = {
    "bert": {"query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"},
    "deberta-v2": {
        "query_proj",
        "key_proj",
        "value_proj",
        "attention.output.dense",
        "intermediate.dense",
        "output.dense",
    },
}


@pytest.mark.parametrize("architecture", ["bert", "deberta-v2"])
def test_lora_targets_the_encoder_and_trains_the_head(tmp_path, architecture):
    model = with_lora(load_base_model(tiny_checkpoint(tmp_path, architecture)), LORA)
    lora_layers = {
        name.removesuffix(".lora_A") for name, _ in model.named_modules() if name.endswith("lora_A")
    }
    assert all(".encoder.layer." in name for name in lora_layers)
    assert len(lora_layers) == 2 * 6  # two layers, six linear maps each
    assert all(any(name.endswith(t) for t in EXPECTED_TARGETS[architecture]) for name in lora_layers)
    assert not any("pooler" in name for name in lora_layers)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("pooler" in name and "modules_to_save" in name for name in trainable)
    assert any("classifier" in name and "modules_to_save" in name for name in trainable)
    assert model.get_base_model().config.id2label == dict(enumerate(LABELS))


@pytest.mark.parametrize(
    ("architecture", "lora"),
    [("bert", LORA), ("deberta-v2", LORA), ("bert", LORA.model_copy(update={"enabled": False}))],
    ids=["bert-lora", "deberta-v2-lora", "bert-full-fine-tuning"],
)
# peft's notice when it wraps the reloaded model, which TorchPredictor.from_dir silences around this call.
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_reloaded_model_gives_the_trained_logits(tmp_path, architecture, lora):
    checkpoint = tiny_checkpoint(tmp_path / "checkpoint", architecture)
    torch.manual_seed(0)
    model = with_lora(load_base_model(checkpoint), lora)
    with torch.no_grad():  # stand in for training: move every trainable weight away from its init
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.5)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    batch = tokenizer(["$AAPL beats estimates", "Fed holds rates"], padding=True, return_tensors="pt")
    with torch.no_grad():
        trained = model(**batch).logits

    normalize = TextNormalization(url_replacement="http")
    save_classifier(model, tokenizer, normalize, 1.5, "tiny/checkpoint", checkpoint, tmp_path / "models")
    reloaded, reloaded_tokenizer, reloaded_normalize, temperature = load_classifier(tmp_path / "models")
    assert reloaded_normalize == normalize
    assert temperature == 1.5
    # Files that name the base model name it as params.yaml does: no folder of this machine.
    for file in (tmp_path / "models").rglob("*"):
        if file.suffix in (".json", ".md"):
            assert str(checkpoint) not in file.read_text(), file.name
    if lora.enabled:
        adapter_config = json.loads((tmp_path / "models" / "adapter_config.json").read_text())
        assert adapter_config["base_model_name_or_path"] == "tiny/checkpoint"
        targets = adapter_config["target_modules"]
        assert targets == sorted(targets) and len(targets) > 1  # not in the hash seed's order
    with torch.no_grad():
        again = reloaded(
            **reloaded_tokenizer(
                ["$AAPL beats estimates", "Fed holds rates"], padding=True, return_tensors="pt"
            )
        ).logits
    torch.testing.assert_close(again, trained)
    assert reloaded.config.id2label == dict(enumerate(LABELS))
    assert (tmp_path / "models" / "adapter_config.json").is_file() == lora.enabled


def test_kept_layers_are_evenly_spaced_from_the_first_to_the_last():
    assert kept_layers(12, 6) == [0, 2, 4, 7, 9, 11]  # DistilBERT's from BERT
    assert kept_layers(12, 12) == list(range(12))
    assert kept_layers(4, 2) == [0, 3]
    assert kept_layers(6, 1) == [0]


@pytest.mark.parametrize("architecture", ["bert", "mpnet", "deberta-v2"])
@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_a_checkpoint_with_fewer_layers_keeps_those_layers_weights(tmp_path, architecture):
    deep = tiny_checkpoint(tmp_path / "deep", architecture, layers=4)
    shallow = checkpoint_with_layers(deep, 2, tmp_path / "shallow")
    original = load_base_model(deep).base_model
    model = load_base_model(shallow)
    assert model.config.num_hidden_layers == len(model.base_model.encoder.layer) == 2
    for new, old in enumerate([0, 3]):
        kept, source = model.base_model.encoder.layer[new], original.encoder.layer[old]
        for (name, weight), (_, expected) in zip(
            kept.state_dict().items(), source.state_dict().items(), strict=True
        ):
            torch.testing.assert_close(weight, expected, msg=name)
    torch.testing.assert_close(
        model.base_model.embeddings.word_embeddings.weight, original.embeddings.word_embeddings.weight
    )
    # Trained and saved as the train stage does, it reloads with its two layers.
    classifier = with_lora(model, LORA)
    tokenizer = AutoTokenizer.from_pretrained(deep)
    save_classifier(classifier, tokenizer, TextNormalization(), 1.0, "tiny", shallow, tmp_path / "models")
    reloaded = load_classifier(tmp_path / "models")[0]
    assert len(reloaded.get_base_model().base_model.encoder.layer) == 2
    with pytest.raises(FinsentError, match=r"model.layers: 5, but .*deep has 4"):
        checkpoint_with_layers(deep, 5, tmp_path / "deeper")


def test_predict_proba_keeps_input_order(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "checkpoint", "bert")
    model = with_lora(load_base_model(checkpoint), LORA).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    texts = ["a much longer tweet about $TSLA deliveries missing estimates", "up", "$SPY flat on the day"]
    together = TorchPredictor(model, tokenizer, 2, TextNormalization(), 1.0).predict_proba(texts)
    one_by_one = [
        TorchPredictor(model, tokenizer, 1, TextNormalization(), 1.0).predict_proba([text])[0]
        for text in texts
    ]
    assert together.shape == (3, len(LABELS))
    np.testing.assert_allclose(together, np.stack(one_by_one), atol=1e-5, rtol=0)


def test_unknown_architecture_needs_explicit_targets(tmp_path):
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100)).save_pretrained(tmp_path)
    with pytest.raises(FinsentError, match=r"lora\.target_modules: no default for model type 'gpt2'"):
        with_lora(load_base_model(tmp_path), LORA)


def test_links_become_one_word_and_nothing_else_changes():
    normalize = TextNormalization(url_replacement="http")
    texts = ["$AAPL up https://t.co/XKcPDilIuU, see http://x.com/a?b=1", "no link: t.co or https here"]
    assert normalize(texts) == ["$AAPL up http see http", "no link: t.co or https here"]
    assert TextNormalization()(texts) == texts


def test_cashtags_become_one_word_and_prices_stay():
    normalize = TextNormalization(url_replacement="http", cashtag_replacement="ticker")
    texts = ["$ESNT $MTG - Move into $BRK.B. Gold at $1,600, $AAPL: up https://t.co/XKcPDilIuU"]
    assert normalize(texts) == ["ticker ticker - Move into ticker. Gold at $1,600, ticker: up http"]
    assert TextNormalization(url_replacement="http")(texts) == [
        texts[0].replace("https://t.co/XKcPDilIuU", "http")
    ]


def test_prediction_normalises_as_the_saved_model_was_trained(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "checkpoint", "bert")
    torch.manual_seed(0)
    model = with_lora(load_base_model(checkpoint), LORA)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    save_classifier(
        model, tokenizer, TextNormalization(), 1.0, "tiny/checkpoint", checkpoint, tmp_path / "models"
    )
    two_links = ["$TSLA deliveries miss https://t.co/abcdef", "$TSLA deliveries miss https://t.co/Zy9Qk2"]

    assert TextNormalization.load(tmp_path / "models") == TextNormalization()  # texts as they are
    as_they_are = TorchPredictor.from_dir(tmp_path / "models", batch_size=2).predict_proba(two_links)
    assert (as_they_are[0] != as_they_are[1]).any()

    TextNormalization(url_replacement="http").save(tmp_path / "models")
    normalised = TorchPredictor.from_dir(tmp_path / "models", batch_size=2).predict_proba(two_links)
    np.testing.assert_array_equal(normalised[0], normalised[1])


def test_a_model_folder_without_its_text_normalisation_is_refused(tmp_path):
    checkpoint = tiny_checkpoint(tmp_path / "checkpoint", "bert")
    model = with_lora(load_base_model(checkpoint), LORA)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    save_classifier(
        model, tokenizer, TextNormalization(), 1.0, "tiny/checkpoint", checkpoint, tmp_path / "models"
    )
    (tmp_path / "models" / NORMALIZATION_FILE).unlink()
    with pytest.raises(FinsentError, match=r"text_normalization.json: missing; every model folder has"):
        TorchPredictor.from_dir(tmp_path / "models", batch_size=2)
    (tmp_path / "models" / NORMALIZATION_FILE).write_text('{"url": 1}')
    with pytest.raises(FinsentError, match=r"text_normalization.json: not the JSON object that the pipeline"):
        TorchPredictor.from_dir(tmp_path / "models", batch_size=2)


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
def test_predictor_divides_the_logits_by_the_saved_temperature(tiny_bert_dir, tmp_path):
    models = tiny_trained_model(tiny_bert_dir, tmp_path / "models")
    texts = ["$AAPL beats estimates", "Fed holds rates", "$TSLA deliveries miss estimates, shares slide"]
    model, tokenizer, _, temperature = load_classifier(models)
    assert temperature == TINY_TEMPERATURE
    with torch.no_grad():
        logits = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    probabilities = TorchPredictor.from_dir(models, batch_size=2).predict_proba(texts)
    np.testing.assert_allclose(probabilities, softmax(logits / TINY_TEMPERATURE, axis=1), atol=1e-5, rtol=0)
    assert np.abs(probabilities - softmax(logits, axis=1)).max() > 1e-2  # T does change them


def test_a_model_folder_without_its_calibration_stops_the_evaluate_stage_on_one_line(tiny_bert_dir, tmp_path):
    tiny_trained_model(tiny_bert_dir, tmp_path / "models")
    (tmp_path / "models" / CALIBRATION_FILE).unlink()
    with pytest.raises(FinsentError, match=r"calibration.json: missing; every model folder has the temp"):
        TorchPredictor.from_dir(tmp_path / "models", batch_size=2)
    shutil.copy(PROJECT / "params.yaml", tmp_path / "params.yaml")
    evaluate = ["models", "validation.jsonl", "audit.csv", str(BEHAVIOUR_CASES), "validation.json", "plots"]
    result = stage_here("evaluate.py", *evaluate, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "error: models/calibration.json: missing; every model folder has the temperature the train stage "
        "fitted on dev (run `dvc repro`)\n"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["models", "params.yaml"]
