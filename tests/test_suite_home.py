"""The test suite never writes into the user's vtempo cache."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import SUITE_HOME

from vtempo.paths import home


def test_the_suite_and_its_subprocesses_use_a_temporary_home():
    assert home() == SUITE_HOME and SUITE_HOME.is_dir()
    assert not str(home()).startswith(str(Path("~/.cache").expanduser()))
    child = subprocess.run([sys.executable, "-c", "from vtempo.paths import home; print(home())"],
                           capture_output=True, text=True, check=True)
    assert Path(child.stdout.strip()) == SUITE_HOME
