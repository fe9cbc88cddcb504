"""A bounded coverage-guided fuzz run of the receive path (atheris), seeded with tests/vectors/.

Runs MDP_FUZZ_SECONDS (default 20) in `make test`; by hand for longer:
    .venv/bin/python tests/fuzz/make_corpus.py tests/fuzz/corpus
    .venv/bin/python tests/fuzz/fuzz_receiver.py -max_total_time=600 tests/fuzz/corpus
A crash is written as crash-* in the working directory, and becomes a regression test in
tests/agent/test_endpoint.py.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

pytest.importorskip("atheris")


def test_the_receiver_survives_a_bounded_fuzz_run(tmp_path):
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, str(HERE / "make_corpus.py"), str(corpus)], check=True)
    seconds = int(os.environ.get("MDP_FUZZ_SECONDS", "20"))
    run = subprocess.run([sys.executable, str(HERE / "fuzz_receiver.py"), f"-max_total_time={seconds}",
                          "-rss_limit_mb=1024", str(corpus)], capture_output=True, text=True, cwd=tmp_path,
                         timeout=seconds + 120)
    done = re.search(r"Done (\d+) runs in (\d+) second", run.stderr)
    print(f"fuzz: {done.group(0) if done else 'no summary'}; corpus {len(list(corpus.iterdir()))} inputs")
    assert run.returncode == 0 and done, run.stderr[-4000:]
    assert not list(tmp_path.glob("crash-*")) and not list(tmp_path.glob("oom-*"))
    assert int(done.group(1)) > 1000
