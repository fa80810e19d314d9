"""The real train stage as 2 data-parallel processes (torchrun, gloo on CPU), against 1 process."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import PROJECT, SOURCE_ENV, edit_params, mirror_fingerprint, run, slice_mirror, stage_script

from finsent.data import MIRROR_ENV
from finsent.distributed import needs_launch, process_group
from finsent.errors import FinsentError

# A rank that raises once rank 0 has made its staging folders: the stage file run with a failing
# train_classifier on that rank (the workers run this same file, as torchrun reruns the command).
FAILING_STAGE = """
import os, time
from pathlib import Path
import finsent.training

def fail_on_rank_1(*args, **kwargs):
    if os.environ["RANK"] == "1":
        deadline = time.monotonic() + 60
        while not list(Path().glob(".models.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.1)
        raise RuntimeError("rank 1 fails")
    return train_classifier(*args, **kwargs)

train_classifier, finsent.training.train_classifier = finsent.training.train_classifier, fail_on_rank_1
stage = {stage!r}
exec(compile(Path(stage).read_text(), stage, "exec"), {{"__name__": "__main__"}})
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir) -> Path:
    """params.yaml and the tokenized splits of 1,200 real tweets (1,080 train, 120 dev).

    The tiny model is trained in full: with LoRA its random, frozen embeddings learn too little
    to tell one run from another.
    """
    project = tmp_path_factory.mktemp("ddp")
    mirror = slice_mirror(project / "mirror", {"train": 1200, "validation": 50})
    shutil.copy(PROJECT / "params.yaml", project / "params.yaml")
    edit_params(
        project,
        data__fingerprint=mirror_fingerprint(mirror),
        model__checkpoint=str(tiny_bert_dir),
        lora__enabled=False,
        train__learning_rate=1e-3,
        train__epochs=3,
        train__batch_size=16,
        # Links kept, as when the tolerance below was measured. With links replaced by one word (the
        # default) the tiny model's runs spread more: 1 and 2 processes differed by up to 0.11 in
        # dev log-loss over a few unseeded tiny models, 0.036 and 0.012 for seeds 42 and 1 of the
        # seeded one (0.004 and 0.011 with links kept): this test with train.seed set to each.
        tokenize__url_replacement=None,
        distill__enabled=False,  # no teacher here: what is under test is the launch
    )
    env = {**SOURCE_ENV, MIRROR_ENV: str(mirror)}
    run([*stage_script("download.py"), "raw"], cwd=project, env=env)
    run(
        [*stage_script("tokenize_splits.py"), "raw", "teacher", "audit/train.csv", "tokenized"],
        cwd=project,
        env=env,
    )
    return project


def train(
    project: Path, folder: str, num_processes: int, script: list[str] | None = None, check=True, env=None
):
    """Run the train stage in a folder of its own, with its own params.yaml and temporary folder."""
    cwd = project / folder
    (cwd / "tmp").mkdir(parents=True)
    shutil.copy(project / "params.yaml", cwd / "params.yaml")
    edit_params(cwd, train__num_processes=num_processes)
    result = run(
        [*(script or stage_script("train.py")), str(project / "tokenized"), "models", "metrics/train"],
        cwd=cwd,
        env={
            **SOURCE_ENV,
            "HF_HUB_OFFLINE": "1",  # module fixtures run before the autouse `_offline`
            "TMPDIR": str(cwd / "tmp"),
            "TRANSFORMERS_VERBOSITY": "info",  # Trainer then prints its batch sizes (on rank 0 only)
            **(env or {}),
        },
        check=check,
    )
    return result, cwd


def files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


@pytest.fixture(scope="module")
def one(project):
    # One thread, as each of the 2 processes has on 2 cores: with two, a process that shares the
    # machine with other work can stall for minutes (threads waiting on each other).
    return train(project, "one", 1, env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def two(project):
    return train(project, "two", 2)


@pytest.mark.slow
def test_two_processes_write_one_set_of_outputs(one, two):
    result, cwd = two
    # Trainer, on rank 0: each process took half of every batch of 16.
    assert "Instantaneous batch size per device = 8" in result.stderr
    assert "Total train batch size (w. parallel, distributed & accumulation) = 16" in result.stderr
    assert result.stdout.count('"best_epoch"') == 1  # the summary, printed by rank 0 alone

    assert sorted(p.name for p in cwd.iterdir()) == ["metrics", "models", "params.yaml", "tmp"]
    assert [p.name for p in (cwd / "metrics").iterdir()] == ["train"]
    assert not list((cwd / "tmp").iterdir())  # no checkpoint or torchrun folder left behind
    # File for file what one process writes (hidden ones included): a normal models/ output and
    # dvclive folder, no staging folder left, nothing written twice.
    assert files(cwd) == files(one[1])


@pytest.mark.slow
def test_two_processes_score_as_one_does(one, two):
    single, double = (json.loads((cwd / "metrics/train/metrics.json").read_text()) for _, cwd in (one, two))
    # Two processes group the rows by length within their own shares and draw other dropout masks:
    # a change the size of a change of seed. On this data the dev log-loss of 1 and 2 processes
    # differed by at most 0.016 over 4 seeds and 4 random tiny models (1 process alone, 4 seeds:
    # 0.898 to 0.915), while a global batch of 32 instead of 16, or 2 epochs instead of 3, moved
    # it by over 0.1, and the class prior alone (an untrained model) scores 1.08.
    assert single["dev"]["log_loss"] < 1.0
    assert double["dev"]["log_loss"] == pytest.approx(single["dev"]["log_loss"], abs=0.04)
    # The train loss is each batch's mean, whatever the number of processes (Trainer would
    # otherwise multiply it by 2).
    assert double["train"]["loss"] == pytest.approx(single["train"]["loss"], abs=0.1)
    assert double["dev"] != single["dev"]  # two processes did train differently: no 1-process run


@pytest.mark.slow
def test_failure_on_one_rank_fails_the_launch_and_leaves_nothing(project, tmp_path):
    script = tmp_path / "failing_train.py"
    script.write_text(FAILING_STAGE.format(stage=str(PROJECT / "stages" / "train.py")))
    result, cwd = train(project, "failing", 2, script=[sys.executable, str(script)], check=False)
    assert result.returncode != 0
    assert "rank 1 fails" in result.stderr
    # Nothing: not even the parent folder that the dvclive folder's staging needed.
    assert files(cwd) == {"params.yaml", "tmp"}


@pytest.mark.slow
def test_batch_not_split_evenly_stops_before_any_launch(project):
    cwd = project / "uneven"
    cwd.mkdir()
    shutil.copy(project / "params.yaml", cwd / "params.yaml")
    edit_params(cwd, train__num_processes=3)  # batch_size 16
    result = run(
        [*stage_script("train.py"), str(project / "tokenized"), "models", "metrics/train"],
        cwd=cwd,
        env=SOURCE_ENV,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: params.yaml: train.num_processes: Value error, train.batch_size 16 (the global batch) "
        "cannot be split evenly among 3 processes"
    ]
    assert sorted(p.name for p in cwd.iterdir()) == ["params.yaml"]


def test_launch_only_outside_a_launch(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not needs_launch(1)
    assert needs_launch(2)
    monkeypatch.setenv("WORLD_SIZE", "2")  # a torchrun worker: it trains
    assert not needs_launch(2)


def test_launch_of_another_size_is_named(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as `torchrun --nproc-per-node 2` by hand
    expected = r"^train\.num_processes: 1, but this process was launched as one of 2"
    with pytest.raises(FinsentError, match=expected), process_group(1):
        pass
