"""The trained classifier behind one interface, whichever runtime runs it: PyTorch or ONNX Runtime.

The predict command, the export stage and the HTTP API all classify through `load_predictor`.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
from ruamel.yaml import YAML, YAMLError
from scipy.special import softmax

from finsent.config import LABELS
from finsent.errors import FinsentError

Backend = Literal["onnx_int8", "onnx_fp32", "pytorch"]

ONNX_FILES: dict[str, str] = {"onnx_fp32": "model.onnx", "onnx_int8": "model_int8.onnx"}
"""The file of each ONNX backend in the export stage's folder (which also holds the tokenizer)."""


class Predictor(Protocol):
    def predict_proba(self, texts: list[str]) -> np.ndarray:
        """Class probabilities, shape (len(texts), len(LABELS)), in the order of `texts`."""
        ...


class TorchPredictor:
    """The model as the train stage saved it (LoRA adapter unmerged), on PyTorch: evaluate's code path."""

    def __init__(self, model_dir: Path, batch_size: int):
        from finsent.modeling import load_classifier  # torch and peft load only for this backend

        self.model, self.tokenizer = load_classifier(model_dir)
        self.batch_size = batch_size

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        from finsent.modeling import predict_proba

        return predict_proba(self.model, self.tokenizer, texts, self.batch_size)


class OnnxPredictor:
    """An exported model on ONNX Runtime (CPU), tokenized exactly as the PyTorch backend tokenizes."""

    def __init__(self, model_file: Path, batch_size: int):
        import onnxruntime
        from transformers import AutoTokenizer

        if not model_file.is_file():
            raise FinsentError(f"{model_file}: no exported model here (run `dvc repro export`)")
        self.session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
        self.input_names = [node.name for node in self.session.get_inputs()]
        self.tokenizer = AutoTokenizer.from_pretrained(model_file.parent)
        self.batch_size = batch_size

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        # As modeling.predict_proba: batches of similar length, results back in input order.
        order = np.argsort([len(text) for text in texts], kind="stable")
        probabilities = np.empty((len(texts), len(LABELS)), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            rows = order[start : start + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in rows], truncation=True, padding=True, return_tensors="np"
            )
            (logits,) = self.session.run(["logits"], {name: batch[name] for name in self.input_names})
            probabilities[rows] = softmax(logits, axis=-1)
        return probabilities


def load_predictor(backend: Backend, model_dir: Path, exported_dir: Path, batch_size: int) -> Predictor:
    """The classifier on `backend`: PyTorch reads the train stage's `model_dir`, ONNX the export stage's."""
    if backend == "pytorch":
        return TorchPredictor(Path(model_dir), batch_size)
    return OnnxPredictor(Path(exported_dir) / ONNX_FILES[backend], batch_size)


def model_folder(backend: Backend, model_dir: Path, exported_dir: Path) -> Path:
    """The pipeline output that `backend` reads."""
    return Path(model_dir) if backend == "pytorch" else Path(exported_dir)


@dataclass(frozen=True)
class LockedOutput:
    md5: str
    size: int
    nfiles: int


def model_version(folder: Path, lock_file: Path = Path("dvc.lock")) -> str | None:
    """The md5 that `dvc.lock` records for the output `folder`, if the folder on disk still matches it.

    None when the folder is no output in dvc.lock, or when its file count or total size differ from the
    recorded ones (trained or exported outside `dvc repro`): a version is never claimed for other files.
    """
    locked = _locked_output(Path(folder), Path(lock_file))
    if locked is None:
        return None
    files = [path for path in Path(folder).rglob("*") if path.is_file()]
    if len(files) != locked.nfiles or sum(path.stat().st_size for path in files) != locked.size:
        return None
    return locked.md5.removesuffix(".dir")


def _locked_output(folder: Path, lock_file: Path) -> LockedOutput | None:
    try:
        lock = YAML(typ="safe").load(lock_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except YAMLError as error:
        raise FinsentError(f"{lock_file}: not valid YAML ({error.__class__.__name__})") from None
    try:
        relative = folder.resolve().relative_to(lock_file.resolve().parent).as_posix()
    except ValueError:  # the folder is outside the project
        return None
    for stage in (lock or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if out.get("path") == relative and {"md5", "size", "nfiles"} <= out.keys():
                return LockedOutput(md5=out["md5"], size=out["size"], nfiles=out["nfiles"])
    return None
