"""docs/speed.md's tables, made from the benchmark records committed under benchmarks/ (each written by
the script that measured it: `finsent.experiments.benchmark_record`), never typed by hand.

Each table opens with the machine, date, commit and command of its record; `finsent-results --write`
puts them into docs/speed.md between each table's markers, and `--check` fails where they differ.
"""

import json
from collections.abc import Callable
from pathlib import Path

from finsent.errors import FinsentError

BENCHMARKS = Path("benchmarks")


def measured(record: dict) -> str:
    """Where, when and how a record was measured, as a line above its table."""
    machine = record["machine"]
    flags = ", ".join(machine["flags"]) or "no AVX2"
    commit = record["commit"][:7] + (" with changes" if record["commit"].endswith("+changes") else "")
    return (
        f"Measured on {machine['model']} ({flags}; {machine['cores']} cores), {record['date'][:10]}, "
        f"commit {commit}:\n`{record['command']}`"
    )


def runtimes(results: dict) -> list[str]:
    peaks = results["peaks_gops"]
    m, k, n = results["peak_shape"]
    lines = [
        f"The CPU's peaks, one {m} x {k} by {k} x {n} product on every core: int8 with signed weights "
        f"(u8 x s8) {peaks['u8s8']:,.0f} GOPS, with unsigned weights (u8 x u8) {peaks['u8u8']:,.0f}, fp32 "
        f"{peaks['fp32']:,.0f} GFLOPS. Versions: "
        + ", ".join(f"{name} {version}" for name, version in results["versions"].items())
        + "."
    ]
    for name, model in results["models"].items():
        lines += [
            "",
            f"**{name}**: {model['operations_a_text'] / 1e9:.2f} G operations a text (2 x the linear layers' "
            f"weights x {model['mean_tokens']:.1f} tokens, the mean of the {results['texts']:,} texts).",
            "",
            "| runtime, weights | batch 32: texts/s | share of the peak (int8's u8 x s8, or fp32) "
            "| batch 1: texts/s (p50 ms) "
            "| PyTorch's label | macro-F1 |",
            "|---|---|---|---|---|---|",
        ]
        for run_name, run in model["runs"].items():
            fidelity = (
                f"{run['agreement_with_pytorch']:.2%} | {run['macro_f1']:.4f}" if "macro_f1" in run else " | "
            )
            peak = peaks["fp32"] if "fp32" in run_name else peaks["u8s8"]
            share = run["batch_32_texts_per_s"] * model["operations_a_text"] / 1e9 / peak
            # No bf16 peak is measured: a bf16 run's share of the fp32 peak would say nothing.
            share_cell = "" if "bf16" in run_name else f"{share:.0%}"
            lines.append(
                f"| {run_name} | {run['batch_32_texts_per_s']:.1f} | {share_cell} "
                f"| {run['batch_1_texts_per_s']:.1f} ({run['batch_1_p50_ms']:.1f}) | {fidelity} |"
            )
    return lines


def sensitivity(results: dict) -> list[str]:
    lines = [
        f"On dev ({results['dev_texts']:,} texts in batches of 32), ONNX Runtime:",
        "",
        "| smoothing alpha, linear layers left in fp32 | fp32 layers | PyTorch's label | mean probability "
        "error | texts/s |",
        "|---|---|---|---|---|",
    ]
    for name, run in results["choices"].items():
        lines.append(
            f"| {name} | {run['fp32_layers']} | {run['dev_agreement_with_pytorch']:.2%} "
            f"| {run['dev_mean_abs_probability_difference']:.4f} | {run['batch_32_texts_per_s']:.1f} |"
        )
    return lines


def profile(results: dict) -> list[str]:
    total = sum(results["microseconds"].values())
    lines = [
        f"`{results['model_file']}` on ONNX Runtime, {results['texts']} texts in batches of "
        f"{results['batch_size']}: {total / 1e6:.2f} s in its kernels.",
        "",
        "| operator | share | ms a text |",
        "|---|---|---|",
    ]
    for name, microseconds in sorted(results["microseconds"].items(), key=lambda item: -item[1]):
        if microseconds / total >= 0.01:
            lines.append(
                f"| {name} | {microseconds / total:.1%} | {microseconds / 1000 / results['texts']:.3f} |"
            )
    return [*lines, "| the rest (each under 1%) | | |"]


def inference(results: dict) -> list[str]:
    lines = [
        f"{results['model']}; {results['texts']:,} texts; {results['cpus']} CPUs.",
        "",
        "| backend | run | texts/s | p50 / p99 (ms) | errors | vs in process, batch 32 |",
        "|---|---|---|---|---|---|",
    ]
    for backend, runs in results["backends"].items():
        batch_32 = next(run["texts_per_s"] for run in runs if run["run"] == "in process, batch 32")
        for run in runs:
            latency = f"{run['p50_ms']:.1f} / {run['p99_ms']:.1f}" if "p50_ms" in run else ""
            errors = run.get("errors", "")
            lines.append(
                f"| {backend} | {run['run']} | {run['texts_per_s']:.1f} | {latency} | {errors} "
                f"| {run['texts_per_s'] / batch_32:.0%} |"
            )
    return lines


def serve_install(results: dict) -> list[str]:
    ready = ", ".join(f"{value:.2f}" for value in results["serve_seconds_to_ready"])
    predict = ", ".join(f"{value:.2f}" for value in results["predict_one_text_seconds"])
    same = "identical" if results["answers_identical_to_full_install"] else "NOT identical"
    return [
        "| a serving install (`requirements-serve.txt`, the package) | measured |",
        "|---|---|",
        f"| its virtual environment on disk | {results['venv_mb']:.0f} MB |",
        f"| `finsent-serve`, start to the first 200 on /readyz (median; runs) | "
        f"{results['serve_seconds_to_ready_median']:.2f} s ({ready}) |",
        f"| `finsent-predict` on one text, end to end (median; runs) | "
        f"{results['predict_one_text_seconds_median']:.2f} s ({predict}) |",
        f"| its answers on {results['texts']:,} validation texts against the full install's | {same} |",
    ]


def bulk_scoring(results: dict) -> list[str]:
    baseline = next(iter(results["runs"].values()))["texts_per_s"]
    lines = [
        f"{results['model']}; {results['texts']:,} texts in one CSV file; {results['cpus']} CPUs.",
        "",
        "| run | texts/s, end to end | texts/s from Ray's start | vs the first |",
        "|---|---|---|---|",
    ]
    for name, run in results["runs"].items():
        lines.append(
            f"| {name} | {run['texts_per_s']:.1f} | {run['texts_per_s_from_ray_start']} "
            f"| {run['texts_per_s'] / baseline:.0%} |"
        )
    return lines


def training(results: dict) -> list[str]:
    model = results["model"]
    layers = f", {model['layers']} layers" if model["layers"] else ""
    baseline = next(iter(results["variants"].values()))["samples_per_second"]
    lines = [
        f"{model['checkpoint']}{layers}; {results['steps']} steps of each variant (3 untimed); "
        f"{results['threads']} threads.",
        "",
        "| variant | samples/s | speed-up | peak memory |",
        "|---|---|---|---|",
    ]
    for name, variant in results["variants"].items():
        speed = variant["samples_per_second"]
        lines.append(f"| {name} | {speed:.1f} | {speed / baseline:.2f}x | {variant['peak_mib']:,.0f} MiB |")
    return lines


def pipeline(results: dict) -> list[str]:
    forced = f" ({', '.join(results['forced'])} rerun on purpose)" if results["forced"] else ""
    return [
        f"| stage{forced} | wall time |",
        "|---|---|",
        *(f"| {stage} | {seconds:,.0f} s |" for stage, seconds in results["stage_seconds"].items()),
        f"| all | {results['total_seconds']:,.0f} s ({results['total_seconds'] / 60:.0f} min) |",
    ]


def tests(results: dict) -> list[str]:
    return [
        "| command | wall time | pytest's summary |",
        "|---|---|---|",
        *(f"| {name} | {run['seconds']:,.0f} s | {run['summary']} |" for name, run in results.items()),
    ]


TABLES: dict[str, tuple[str, Callable[[dict], list[str]]]] = {
    "runtimes": ("runtimes.json", runtimes),
    "int8-sensitivity": ("int8_sensitivity.json", sensitivity),
    "int8-profile": ("int8_profile.json", profile),
    "inference": ("inference.json", inference),
    "serve-install": ("serve_install.json", serve_install),
    "bulk-scoring": ("bulk_scoring.json", bulk_scoring),
    "training": ("training.json", training),
    "pipeline": ("pipeline.json", pipeline),
    "tests": ("tests.json", tests),
}
"""docs/speed.md's generated tables: the block's name, its record under benchmarks/, its maker."""


def speed_table(name: str, root: Path = Path()) -> str:
    file_name, make = TABLES[name]
    path = root / BENCHMARKS / file_name
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:  # said in the table's place, so that the docs still agree with the files
        return f"No record yet: the command above writes {(BENCHMARKS / file_name).as_posix()}."
    except json.JSONDecodeError as error:
        raise FinsentError(f"{path}: not valid JSON ({error.msg})") from None
    return "\n".join([measured(record), "", *make(record["results"])])


def begin_marker(name: str) -> str:
    return (
        f"<!-- speed: {name}, generated by `finsent-results --write` from {BENCHMARKS}/{TABLES[name][0]}; "
        "do not edit by hand -->"
    )


def end_marker(name: str) -> str:
    return f"<!-- end of speed: {name} -->"
