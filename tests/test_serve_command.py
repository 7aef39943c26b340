"""The ``batcher serve`` command's options, as a user types them: the real CLI in a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from servehelp import clean_env


def test_an_expiry_no_rfc_3339_time_could_say_is_refused(tmp_path: Path) -> None:
    # Accepted, it made every create, retrieve and list answer a 500 (the year 29405 has no RFC 3339
    # spelling), and the batch it had stored kept the list failing after a restart.
    done = subprocess.run([sys.executable, "-m", "batcher", "serve", "--port", "0", "--db", str(tmp_path / "s.db"),
                           "--expire-after", "9999999d"], capture_output=True, text=True, timeout=60,
                          env=clean_env())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("batcher: error: Invalid value for '--expire-after': "
                                                    "'9999999d' is longer than 3650d, the longest allowed")
    assert not (tmp_path / "s.db").exists()


def test_an_announcement_that_cannot_be_written_stops_the_server_in_one_line(tmp_path: Path) -> None:
    # It failed inside uvicorn's start-up: a traceback, and the resumed batches ended without a stop's grace.
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "batcher", "serve", "--port", "0", "--db", str(tmp_path / "s.db"),
                               "--base-url", "http://127.0.0.1:9"], stdout=full, stderr=subprocess.PIPE, text=True,
                              timeout=60, env=clean_env())
    assert done.returncode == 2
    assert done.stderr == "batcher: error: stdout: cannot write: disk full\n"
