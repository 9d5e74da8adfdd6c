"""The reference packages that the tests compare against are pinned in ``constraints/references.txt`` and installed
with it by ``.ci/run`` and ``launch/quickstart.sh``: a new upstream release (opencv-python 5.x, ...) must not change
what a test expects. The pins that matter are written out here as well (an independent record: editing the
constraints file alone does not silently move a reference)."""
import re
import shlex
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CONSTRAINTS = "constraints/references.txt"
# the reference versions the tests were checked against (README, "The test command that `.ci/run` runs")
EXPECTED = {"opencv-python": "4.11.0.86", "opencv-python-headless": "4.11.0.86", "mmengine": "0.10.7",
            "mmcv-lite": "2.1.0", "mmsegmentation": "1.2.2", "mmdet": "3.3.0", "pycocotools": "2.0.11",
            "instaboostfast": "0.1.2"}


def _pins():
    pins = {}
    for n, line in enumerate((ROOT / CONSTRAINTS).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9.+\-]*)", line)
        assert m, f"{CONSTRAINTS}:{n}: not an exact pin 'name==version': {line!r}"
        pins[m[1].lower()] = m[2]
    return pins


def test_constraints_pin_the_references():
    pins = _pins()
    for name, version in EXPECTED.items():
        assert pins.get(name) == version, f"{CONSTRAINTS}: {name} must be pinned to {version}, got {pins.get(name)}"


@pytest.mark.parametrize("script", [".ci/run", "launch/quickstart.sh"])
def test_install_steps_use_the_constraints(script):
    installs = [shlex.split(line) for line in (ROOT / script).read_text().splitlines()
                if re.search(r"pip install .*-e ", line) and not line.lstrip().startswith("#")]
    assert installs, f"{script}: no 'pip install -e' line"
    for args in installs:
        assert CONSTRAINTS in args and args[args.index(CONSTRAINTS) - 1] in ("-c", "--constraint"), \
            f"{script}: {' '.join(args)} does not install with -c {CONSTRAINTS}"


def test_installed_references_are_the_pinned_versions():
    """What this environment runs the tests with (CI installs with the constraints)."""
    wrong = []
    for name, version in _pins().items():
        try:
            got = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a constraint only pins what something requires (the -headless wheel, ...)
        if got != version:
            wrong.append(f"{name} {got} (pinned: {version})")
    assert not wrong, (f"installed reference packages differ from {CONSTRAINTS}: {', '.join(wrong)}; install with "
                       f"pip install -c {CONSTRAINTS} -e \".[train,dev,mm,remote,htc,onnx,web-test]\"")
