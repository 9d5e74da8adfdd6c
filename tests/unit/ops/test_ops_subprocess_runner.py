"""``msda_subprocess.run_checks``: a crashing check is reported by name and the others still run."""
import os
import textwrap
from pathlib import Path

import msda_subprocess
from msda_subprocess import check_names, run_checks

SCRIPT = textwrap.dedent('''
    import ctypes, os, sys
    sys.path.insert(0, os.environ["RUNNER_DIR"])
    from msda_subprocess import check, main

    @check("passes")
    def _():
        return "fine"

    @check("segfaults")
    def _():
        ctypes.string_at(0)  # reads address 0: SIGSEGV

    @check("fails")
    def _():
        assert 1 == 2, "wrong"

    @check("after_the_crash")
    def _():
        return "still ran"

    if __name__ == "__main__":
        main()
''')


def test_crash_is_one_failing_check(tmp_path):
    script = tmp_path / "checks.py"
    script.write_text(SCRIPT)
    names = check_names(script)
    assert names == ["passes", "segfaults", "fails", "after_the_crash"]
    env = dict(os.environ, RUNNER_DIR=str(Path(msda_subprocess.__file__).parent))
    results = run_checks(script, names, env)
    assert results["passes"]["ok"] and "fine" in results["passes"]["detail"]
    assert not results["segfaults"]["ok"] and "SIGSEGV" in results["segfaults"]["detail"]
    assert "while running segfaults" in results["segfaults"]["detail"]
    assert not results["fails"]["ok"] and "wrong" in results["fails"]["detail"]
    assert results["after_the_crash"]["ok"] and "still ran" in results["after_the_crash"]["detail"]
