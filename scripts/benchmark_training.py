"""Training throughput of the train stage's setup against a plain first attempt, side by side.

    PYTHONPATH=src:. python scripts/benchmark_training.py [--steps 40] [--tokenized data/tokenized]

Every variant runs the train stage's own Trainer arguments, model and LoRA (params.yaml) for the same
number of steps on the same tokenized train split (the clock starts after a few warm-up steps), in a
fresh process of its own so that its peak memory is its own. The variants add one speed-up at a time:

- baseline: every sequence padded to tokenize.max_length, batches in random order, fp32;
- dynamic padding: each batch padded to its longest sequence;
- + length grouping: batches of similar lengths (what the train stage does);
- + bf16 autocast: only on a CPU with native bf16 (AVX-512 BF16 or AMX); skipped elsewhere;
- the train stage without LoRA dropout (`lora.dropout: 0`, fp32): each adapter's dropout draws a mask
  over its input, a cost of its own on a model this small.
"""

import argparse
import dataclasses
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

from finsent.config import load_params
from finsent.experiments.benchmark_record import write_record
from finsent.inference.cpu import this_cpu

VARIANTS = {
    "baseline (padded to max_length, random order, fp32)": {"padding": "max_length", "grouped": False},
    "dynamic padding": {"padding": "longest", "grouped": False},
    "dynamic padding + length grouping (train stage)": {"padding": "longest", "grouped": True},
    "+ bf16 autocast": {"padding": "longest", "grouped": True, "bf16": True},
    "train stage without LoRA dropout": {"padding": "longest", "grouped": True, "lora_dropout": 0.0},
}


WARM_UP_STEPS = 3
"""Steps left out of the timing: the first ones also pay for allocations and one-time set-up."""


def measure(
    tokenized_dir: Path,
    steps: int,
    padding: str,
    grouped: bool,
    bf16: bool = False,
    lora_dropout: float | None = None,
) -> dict:
    """Train `steps` batches in this process; samples/s and the process's peak resident memory."""
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainerCallback

    from finsent.modeling import load_base_model, with_lora
    from finsent.pretrained import resolve_pretrained
    from finsent.tokenization import TOKENIZER_SUBDIR, read_tokenized
    from finsent.training import training_arguments

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (WARM_UP_STEPS, steps):
                times[state.global_step] = time.perf_counter()

    times: dict[int, float] = {}
    params = load_params()
    lora = params.lora if lora_dropout is None else params.lora.model_copy(update={"dropout": lora_dropout})
    model = with_lora(
        load_base_model(resolve_pretrained(params.model.checkpoint, params.model.revision)), lora
    )
    tokenizer = AutoTokenizer.from_pretrained(tokenized_dir / TOKENIZER_SUBDIR)
    with tempfile.TemporaryDirectory() as scratch:
        args = dataclasses.replace(
            training_arguments(params.train, scratch),
            remove_unused_columns=True,  # a distilling run's teacher logits: not timed here
            max_steps=steps,
            eval_strategy="no",
            save_strategy="no",
            load_best_model_at_end=False,
            train_sampling_strategy="group_by_length" if grouped else "random",
            bf16=bf16,
            use_cpu=True,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=read_tokenized(tokenized_dir, "train"),
            data_collator=DataCollatorWithPadding(
                tokenizer, padding=padding, max_length=params.tokenize.max_length
            ),
            callbacks=[StepClock()],
        )
        trainer.train()
    timed_samples = (steps - WARM_UP_STEPS) * params.train.batch_size
    return {
        "samples_per_second": timed_samples / (times[steps] - times[WARM_UP_STEPS]),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="training steps per variant, 3 of them warm-up")
    parser.add_argument("--tokenized", type=Path, default=Path("data/tokenized"))
    parser.add_argument("--output", type=Path, help="also write the results here, as JSON")
    args = parser.parse_args()
    # Native bf16 arithmetic (AVX-512 BF16 or AMX): elsewhere bf16 is emulated and slower than fp32.
    native_bf16 = this_cpu().native_bf16
    spawn = multiprocessing.get_context("spawn")
    results = {}
    for name, variant in VARIANTS.items():
        if variant.get("bf16") and not native_bf16:
            print(f"{name}: skipped, this CPU has no native bf16")
            continue
        with spawn.Pool(1) as pool:
            results[name] = pool.apply(measure, (args.tokenized, args.steps), variant)
        print(f"{name}: {results[name]['samples_per_second']:.1f} samples/s", flush=True)
    baseline = next(iter(results.values()))["samples_per_second"]
    print(f"\n{args.steps} steps each, {torch.get_num_threads()} threads\n")
    print("| variant | samples/s | speed-up | peak memory |\n|---|---|---|---|")
    for name, result in results.items():
        speedup = result["samples_per_second"] / baseline
        print(
            f"| {name} | {result['samples_per_second']:.1f} | {speedup:.2f}x | {result['peak_mib']:.0f} MiB |"
        )
    if args.output:
        params = load_params()
        model = {"checkpoint": params.model.checkpoint, "layers": params.model.layers}
        record = {
            "model": model,
            "steps": args.steps,
            "threads": torch.get_num_threads(),
            "variants": results,
        }
        write_record(args.output, record)


if __name__ == "__main__":
    main()
