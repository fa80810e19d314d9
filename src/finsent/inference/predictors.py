"""The trained classifier behind one interface, whichever runtime runs it: PyTorch or ONNX Runtime.

The predict command, the export stage and the HTTP API all classify through `load_predictor`.
"""

from pathlib import Path

import numpy as np
from scipy.special import softmax

from finsent.calibration import load_temperature
from finsent.config import LABELS, Backend
from finsent.errors import FinsentError
from finsent.text import TextNormalization, load_text_processing

ONNX_FILES: dict[str, str] = {"onnx_fp32": "model.onnx", "onnx_int8": "model_int8.onnx"}
"""The file of each ONNX backend in the export stage's folder (which also holds the tokenizer)."""


class Predictor:
    """The classifier on one runtime, in batches of texts of similar length (little padding is wasted).

    Texts are normalised as in training (`TextNormalization`, saved with the model), and the logits
    divided by the temperature fitted on dev (`finsent.calibration`, saved with it too) before the
    softmax. Subclasses give the logits of one batch; predict_proba puts the results back in input order.
    """

    def __init__(self, batch_size: int, normalize: TextNormalization, temperature: float):
        self.batch_size = batch_size
        self.normalize = normalize
        self.temperature = temperature

    def batch_logits(self, texts: list[str]) -> np.ndarray:
        """Logits, shape (len(texts), len(LABELS)), of one batch."""
        raise NotImplementedError

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, shape (len(texts), len(LABELS)), in the order of `texts`."""
        texts = self.normalize(texts)
        order = np.argsort([len(text) for text in texts], kind="stable")
        probabilities = np.empty((len(texts), len(LABELS)), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            logits = self.batch_logits([texts[i] for i in rows])
            probabilities[rows] = softmax(logits / self.temperature, axis=-1)
        return probabilities


class TorchPredictor(Predictor):
    """The model as the train stage saved it, on PyTorch: evaluate's code path, and the reference that
    the export stage compares ONNX with. A LoRA adapter is merged into the encoder's linear layers at
    load (peft's merge_and_unload): the same function, without the adapters' extra products at every
    layer."""

    def __init__(self, model, tokenizer, batch_size: int, normalize: TextNormalization, temperature: float):
        super().__init__(batch_size, normalize, temperature)
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def from_dir(cls, model_dir: Path, batch_size: int, device: str = "cpu") -> "TorchPredictor":
        from peft import PeftModel  # torch and peft load only for this backend

        from finsent.modeling import load_classifier, peft_wrapping_quietly

        with peft_wrapping_quietly():
            model, tokenizer, normalize, temperature = load_classifier(model_dir)
        if isinstance(model, PeftModel):
            model = model.merge_and_unload()  # the base model, in eval mode as loaded
        return cls(model.to(device), tokenizer, batch_size, normalize, temperature)

    def batch_logits(self, texts: list[str]) -> np.ndarray:
        import torch

        device = next(self.model.parameters()).device
        batch = self.tokenizer(texts, truncation=True, padding=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            return self.model(**batch).logits.float().cpu().numpy()


class OnnxPredictor(Predictor):
    """An exported model on ONNX Runtime, tokenized exactly as the PyTorch backend tokenizes.

    On `device` "cuda" it runs on ONNX Runtime's CUDA provider, which the GPU build of ONNX Runtime
    (the onnxruntime-gpu package, installed in place of onnxruntime) has; ONNX Runtime runs any node
    that provider has no kernel for on the CPU.
    """

    def __init__(self, model_file: Path, batch_size: int, threads: int = 0, device: str = "cpu"):
        import onnxruntime

        if not model_file.is_file():
            raise FinsentError(f"{model_file}: no exported model here (run `dvc repro export`)")
        providers = onnx_providers(device)
        self.tokenizer, normalize = load_text_processing(model_file.parent)
        super().__init__(batch_size, normalize, load_temperature(model_file.parent))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(model_file, options, providers=providers)
        self.input_names = [node.name for node in self.session.get_inputs()]

    def batch_logits(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(texts, truncation=True, padding=True, return_tensors="np")
        (logits,) = self.session.run(["logits"], {name: batch[name] for name in self.input_names})
        return logits


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime's execution providers for `device`, in the order it tries them for each node."""
    import onnxruntime

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise FinsentError(
            "the ONNX backends on a GPU need ONNX Runtime's CUDA provider, which this onnxruntime "
            f"lacks: install onnxruntime-gpu=={onnxruntime.__version__} in place of onnxruntime"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def load_predictor(
    backend: Backend,
    model_dir: Path,
    exported_dir: Path,
    batch_size: int,
    threads: int = 0,
    device: str = "cpu",
) -> Predictor:
    """The classifier on `backend`: PyTorch reads the train stage's `model_dir`, ONNX the export stage's.

    `threads`: the cores one model run may use; 0 leaves the runtime's default (every core).
    `device`: "cpu", or "cuda" for the (first visible) CUDA GPU.
    """
    if backend == "pytorch":
        if threads:
            import torch

            torch.set_num_threads(threads)  # for the whole process: PyTorch has no per-model setting
        return TorchPredictor.from_dir(Path(model_dir), batch_size, device)
    return OnnxPredictor(Path(exported_dir) / ONNX_FILES[backend], batch_size, threads, device)


def model_folder(backend: Backend, model_dir: Path, exported_dir: Path) -> Path:
    """The pipeline output that `backend` reads."""
    return Path(model_dir) if backend == "pytorch" else Path(exported_dir)
