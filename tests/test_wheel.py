"""The README's wheel route: ``python -m build --wheel`` gives an installable pure-Python wheel
without CUDA (setup.py builds the optional CUDA extension only beside a CUDA torch and nvcc)."""
import configparser
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def test_wheel_builds_with_both_packages_and_the_console_script(tmp_path):
    pytest.importorskip("build", reason="the dev extra's build package")
    # a copy as a clone has it, so the build's egg-info and build/ never land in the checkout
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "runs", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", ".hypothesis", "*.so"))
    # --no-isolation: use this environment's setuptools and torch instead of downloading a build env
    proc = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("vaopd-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode())
        archive.extractall(tmp_path / "site")
    for module in ("vaopd_kernels/__init__.py", "vaopd_kernels/backends/torch_chunked.py",
                   "vaopd_kernels/integrations/trl.py", "vaopd_trainer/cli.py", "vaopd_trainer/train.py"):
        assert module in names, module
    assert entry_points["console_scripts"]["vaopd-train"] == "vaopd_trainer.cli:main"

    # the unpacked wheel alone (not this checkout) imports and answers the console script's --help
    site = str(tmp_path / "site")
    probe = ("import sys, vaopd_kernels, vaopd_trainer.cli as cli; "
             "assert vaopd_kernels.__file__.startswith(sys.argv[1]), vaopd_kernels.__file__; "
             "sys.exit(cli.main(['--help']))")
    run = subprocess.run([sys.executable, "-c", probe, site], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=site),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "vaopd-train" in run.stdout
