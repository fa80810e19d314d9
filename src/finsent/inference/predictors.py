"""The trained classifier behind one interface, whichever runtime runs it: OpenVINO, ONNX Runtime or
PyTorch.

The predict command, the HTTP API, bulk scoring and the evaluate and export stages all classify through
`load_predictor`. The exported models import only what a serving install has (numpy, tokenizers and
OpenVINO or ONNX Runtime); the pytorch backend needs the training stack (`pip install 'finsent[train]'`).
"""

import importlib
import importlib.util
from pathlib import Path
from typing import Literal

import numpy as np

from finsent.config import LABELS, Backend
from finsent.errors import FinsentError
from finsent.inference.cpu import this_cpu
from finsent.inference.model_version import model_version
from finsent.inference.tokenizer import TOKENIZER_CONFIG, TOKENIZER_FILE, TextEncoder
from finsent.pretrained import cache_dir
from finsent.temperature import CALIBRATION_FILE, load_temperature
from finsent.text import NORMALIZATION_FILE, TextNormalization

FP32_FILE = "model.onnx"
INT8_FILES = {"signed": "model_int8.onnx", "unsigned": "model_int8_u8.onnx"}
"""The int8 model with its weights stored signed (fast where the CPU has VNNI or AMX) and the same
weights stored unsigned, shifted by 128 (exact on x86 CPUs with AVX2 alone): `finsent.inference.cpu`."""

Int8Weights = Literal["auto", "signed", "unsigned"]
Runtime = Literal["auto", "openvino", "onnxruntime"]
"""What runs an exported model: OpenVINO (the fastest on x86 CPUs: docs/speed.md), ONNX Runtime (its
fallback, and the GPU's), or auto: OpenVINO on a CPU where it is installed, else ONNX Runtime."""

TRAIN_EXTRA = "pip install 'finsent[train]'"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis. By hand, as scipy.special.softmax computes it: scipy is not in a
    serving install for one function."""
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class Predictor:
    """The classifier on one runtime, in batches of texts of similar length (little padding is wasted).

    Texts are normalised as in training (`TextNormalization`, saved with the model), and the logits
    divided by the temperature fitted on dev (`finsent.calibration`, saved with it too) before the
    softmax. Subclasses give the logits of one batch; predict_proba puts the results back in input order.
    """

    version = ""
    """Which model this is (`finsent.inference.model_version`), as answers and outputs name it."""

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
            probabilities[rows] = softmax(logits / self.temperature)
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
    def from_dir(
        cls, model_dir: Path, batch_size: int, device: str = "cpu", threads: int = 0
    ) -> "TorchPredictor":
        try:  # the training stack, which a serving install does not have
            import torch
            from peft import PeftModel

            from finsent.modeling import load_classifier, peft_wrapping_quietly
        except ImportError as error:
            raise FinsentError(
                f"the pytorch backend needs the training stack ({error.name} is not installed): {TRAIN_EXTRA}"
            ) from None
        if threads:
            torch.set_num_threads(threads)  # for the whole process: PyTorch has no per-model setting
        with peft_wrapping_quietly():
            model, tokenizer, normalize, temperature = load_classifier(model_dir)
        if isinstance(model, PeftModel):
            model = model.merge_and_unload()  # the base model, in eval mode as loaded
        predictor = cls(model.to(device), tokenizer, batch_size, normalize, temperature)
        predictor.version = model_version(model_dir)
        return predictor

    def batch_logits(self, texts: list[str]) -> np.ndarray:
        import torch

        device = next(self.model.parameters()).device
        batch = self.tokenizer(texts, truncation=True, padding=True, return_tensors="pt").to(device)
        with torch.inference_mode():
            return self.model(**batch).logits.float().cpu().numpy()


class ExportedPredictor(Predictor):
    """An exported ONNX file, tokenized from its folder's tokenizer.json as training tokenized; the
    runtime that runs it is the subclass's."""

    runtime = ""

    def __init__(self, model_file: Path, batch_size: int):
        if not model_file.is_file():
            raise FinsentError(f"{model_file}: no exported model here (run `dvc repro export`)")
        folder = model_file.parent
        self.model_file = model_file
        self.encode = TextEncoder(folder)
        super().__init__(batch_size, TextNormalization.load(folder), load_temperature(folder))
        files = (model_file.name, TOKENIZER_FILE, TOKENIZER_CONFIG, NORMALIZATION_FILE, CALIBRATION_FILE)
        self.version = f"{self.runtime}/{model_file.stem}-{model_version(folder, files)}"


class OnnxPredictor(ExportedPredictor):
    """An exported model on ONNX Runtime.

    On `device` "cuda" it runs on ONNX Runtime's CUDA provider, which the GPU build of ONNX Runtime
    (the onnxruntime-gpu package, installed in place of onnxruntime) has; ONNX Runtime runs any node
    that provider has no kernel for on the CPU.
    """

    runtime = "onnxruntime"

    def __init__(self, model_file: Path, batch_size: int, threads: int = 0, device: str = "cpu"):
        onnxruntime = import_runtime("onnxruntime")
        providers = onnx_providers(device)
        super().__init__(model_file, batch_size)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(model_file, options, providers=providers)
        self.input_names = [node.name for node in self.session.get_inputs()]

    def batch_logits(self, texts: list[str]) -> np.ndarray:
        batch = self.encode(texts)
        (logits,) = self.session.run(["logits"], {name: batch[name] for name in self.input_names})
        return logits


class OpenVinoPredictor(ExportedPredictor):
    """An exported model compiled by OpenVINO for the CPU, for the lowest latency (one stream).

    The compiled model is cached under the finsent cache folder (`FINSENT_CACHE_DIR`, else
    ~/.cache/finsent): compiling an int8 model takes OpenVINO longer than the rest of a server's
    start-up, loading it from the cache a fraction of that.
    """

    runtime = "openvino"

    def __init__(self, model_file: Path, batch_size: int, threads: int = 0):
        openvino = import_runtime("openvino")
        super().__init__(model_file, batch_size)
        core = openvino.Core()
        core.set_property({"CACHE_DIR": str(cache_dir() / "openvino")})
        config = {"PERFORMANCE_HINT": "LATENCY"} | ({"INFERENCE_NUM_THREADS": threads} if threads else {})
        self.compiled = core.compile_model(model_file, "CPU", config)
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]

    def batch_logits(self, texts: list[str]) -> np.ndarray:
        batch = self.encode(texts)
        return self.compiled({name: batch[name] for name in self.input_names})["logits"]


def import_runtime(name: str):
    """The runtime's module, or a one-line error saying how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError:
        raise FinsentError(f"the {name} runtime is not installed: pip install {name}") from None


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime's execution providers for `device`, in the order it tries them for each node."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    onnxruntime = import_runtime("onnxruntime")
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise FinsentError(
            "the ONNX backends on a GPU need ONNX Runtime's CUDA provider, which this onnxruntime "
            f"lacks: install onnxruntime-gpu=={onnxruntime.__version__} in place of onnxruntime"
        )
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def onnx_file(
    backend: Backend, exported_dir: Path, int8_weights: Int8Weights = "auto", runtime: Runtime = "auto"
) -> Path:
    """The file of `exported_dir` that `backend` runs on `runtime` (on the CPU): for int8, the weights'
    format that is fast and exact there unless `int8_weights` names one. OpenVINO takes signed weights
    on every CPU; ONNX Runtime multiplies them exactly only where the CPU has VNNI or AMX."""
    if backend == "onnx_fp32":
        return Path(exported_dir) / FP32_FILE
    if int8_weights == "auto":
        signed = choose_runtime(runtime, "cpu") == "openvino" or this_cpu().signed_int8_weights
        int8_weights = "signed" if signed else "unsigned"
    return Path(exported_dir) / INT8_FILES[int8_weights]


def choose_runtime(runtime: Runtime, device: str) -> Literal["openvino", "onnxruntime"]:
    """`runtime`, or for "auto": OpenVINO on a CPU where it is installed, else ONNX Runtime."""
    if runtime != "auto":
        return runtime
    return "openvino" if device == "cpu" and installed("openvino") else "onnxruntime"


def load_predictor(
    backend: Backend,
    model_dir: Path,
    exported_dir: Path,
    batch_size: int,
    threads: int = 0,
    device: str = "cpu",
    int8_weights: Int8Weights = "auto",
    runtime: Runtime = "auto",
) -> Predictor:
    """The classifier on `backend`: PyTorch reads the train stage's `model_dir`, ONNX the export stage's.

    `threads`: the cores one model run may use; 0 leaves the runtime's default (every core).
    `device`: "cpu", or "cuda" for the (first visible) CUDA GPU. `runtime`: for the ONNX backends.
    """
    if backend == "pytorch":
        return TorchPredictor.from_dir(Path(model_dir), batch_size, device, threads)
    runtime = choose_runtime(runtime, device)
    model_file = onnx_file(backend, exported_dir, int8_weights, runtime)
    if runtime == "openvino":
        if device != "cpu":
            raise FinsentError(f"the openvino runtime runs on the CPU here, not on {device}")
        return OpenVinoPredictor(model_file, batch_size, threads)
    return OnnxPredictor(model_file, batch_size, threads, device)
