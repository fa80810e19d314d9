"""Stage train: LoRA fine-tuning on train (distilling the teacher, if on), epoch chosen by dev macro-F1,
then a temperature fitted on dev that calibrates its probabilities (saved with the model).

dvclive logs each epoch. With `train.num_processes` above 1 the stage reruns itself as that many
data-parallel workers under torchrun.
"""

import argparse
import json
import tempfile
from contextlib import ExitStack
from pathlib import Path

from dvclive import Live

from finsent import distributed
from finsent.atomic import atomic_dir
from finsent.cli import run_cli
from finsent.config import TRAINING_SECTIONS, load_params
from finsent.modeling import checkpoint_with_layers, save_classifier
from finsent.pretrained import resolve_pretrained
from finsent.text import load_text_processing
from finsent.tokenization import TOKENIZER_SUBDIR, read_tokenized
from finsent.training import calibrate_on_dev, train_classifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("tokenized_dir", type=Path)
    parser.add_argument("model_dir", type=Path, help="folder for the adapter, head, base and tokenizer")
    parser.add_argument("live_dir", type=Path, help="dvclive folder: params, per-epoch metrics, summary")
    args = parser.parse_args()
    params = load_params()
    checkpoint_dir = resolve_pretrained(params.model.checkpoint, params.model.revision)
    num_processes = params.train.num_processes
    if distributed.needs_launch(num_processes):
        raise SystemExit(distributed.launch_workers(num_processes))

    main_process = distributed.is_main_process()
    tokenizer, normalize = load_text_processing(args.tokenized_dir / TOKENIZER_SUBDIR)
    with distributed.process_group(num_processes), ExitStack() as outputs:
        if params.model.layers is not None:
            folder = Path(outputs.enter_context(tempfile.TemporaryDirectory(prefix="finsent-layers-")))
            checkpoint_dir = checkpoint_with_layers(checkpoint_dir, params.model.layers, folder)
        model_staging = live = None
        if main_process:  # the other workers write nothing, not even a staging folder
            model_staging = outputs.enter_context(atomic_dir(args.model_dir))
            live_staging = outputs.enter_context(atomic_dir(args.live_dir))
            live = outputs.enter_context(Live(str(live_staging), dvcyaml=None, save_dvc_exp=False))
            # The teacher's section only when distilling: without distillation the model owes it nothing.
            recorded = set(TRAINING_SECTIONS) - (set() if params.distill.enabled else {"teacher"})
            live.log_params(params.model_dump(include=recorded))
        dev_set = read_tokenized(args.tokenized_dir, "dev")
        trainer, summary = train_classifier(
            checkpoint_dir,
            params.lora,
            params.train,
            read_tokenized(args.tokenized_dir, "train"),
            dev_set,
            tokenizer,
            params.distill,
            live,
        )
        summary["calibration"] = calibrate_on_dev(trainer, dev_set)
        if main_process:
            live.summary["calibration"] = summary["calibration"]
            temperature, checkpoint = summary["calibration"]["temperature"], params.model.checkpoint
            save_classifier(
                trainer.model, tokenizer, normalize, temperature, checkpoint, checkpoint_dir, model_staging
            )
    if main_process:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    run_cli(main)
