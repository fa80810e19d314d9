import signal
import subprocess
import sys
import time

import pytest

from finsent.atomic import atomic_dir, atomic_file


def test_output_replaced_only_when_whole(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old").write_text("earlier run")
    with pytest.raises(RuntimeError), atomic_dir(out) as staging:
        (staging / "new").write_text("half")
        raise RuntimeError("stage failed")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in out.iterdir()] == ["old"]

    with atomic_dir(out) as staging:
        (staging / "new").write_text("whole")
    assert [p.name for p in out.iterdir()] == ["new"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_file_replaced_only_when_whole(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("{}")
    with pytest.raises(RuntimeError), atomic_file(target) as staging:
        staging.write_text('{"half":')
        raise RuntimeError("stage failed")
    assert target.read_text() == "{}"
    with atomic_file(target) as staging:
        staging.write_text('{"whole": 1}')
    assert target.read_text() == '{"whole": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_sigterm_leaves_no_staging_folder(tmp_path):
    program = (
        "import time\n"
        "from pathlib import Path\n"
        "from finsent.atomic import atomic_dir\n"
        "from finsent.cli import run_cli\n"
        "def main():\n"
        "    with atomic_dir(Path('out')) as staging:\n"
        "        (staging / 'part').write_text('half')\n"
        "        print('writing', flush=True)\n"
        "        time.sleep(60)\n"
        "run_cli(main)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", program], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline() == "writing\n"
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 128 + signal.SIGTERM
    assert time.monotonic() - started < 30
    assert list(tmp_path.iterdir()) == []
