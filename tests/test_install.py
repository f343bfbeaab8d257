"""The suite installed as a user installs it: a wheel built from the source, installed into a fresh virtualenv
outside the source tree, used from a folder that holds the user's own ``envs/`` and ``agents/`` packages and a
folder named ``metarl`` (a clone beside the user's scripts).

The fresh virtualenv takes the suite's dependencies (torch, Gymnasium, MuJoCo, ...) from the environment running the
tests, through a ``.pth`` file naming its site-packages, instead of downloading them again: what is under test is the
wheel (its import names, its presets, its console script), and ``.ci/run`` already installs the declared
dependencies from scratch. The ``.pth`` adds those folders to ``sys.path`` without running the ``.pth`` files inside
them, so the source checkout's editable install stays invisible there.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "metarl", "envs", "agents")
"""What a wheel is built from (pyproject's packages and their package-dir folders, and the readme it names)."""

pytestmark = pytest.mark.slow


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    """Run ``command``, fail the test with its output if it fails, and return its output."""
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{output}"
    return output


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Build the wheel from a copy of the sources, install it into a fresh virtualenv, and make the user's folder."""
    work = tmp_path_factory.mktemp("install")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, source / name)
    environ = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(work / "dist"), "."],
        source,
        environ,
    )
    (wheel,) = (work / "dist").glob("metarl-*.whl")

    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], work, environ)
    python = venv / "bin" / "python"
    (venv_site,) = (venv / "lib").glob("python*/site-packages")
    (venv_site / "test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)], work, environ)

    user = work / "user"
    for package in ("envs", "agents"):  # the user's own packages, named as the suite's folders are
        (user / package).mkdir(parents=True)
        (user / package / "__init__.py").write_text(f'OWNER = "user"\nKIND = "{package}"\n')
    (user / "metarl").mkdir()  # a clone of the suite beside the user's scripts: a folder, not the package
    (user / "metarl" / "README.md").write_text("a clone of metarl\n")
    shutil.copy2(ROOT / "scripts" / "custom_family_example.py", user / "custom_family_example.py")
    (user / "my-preset.yaml").write_text("family: MetaRL/Navigation2D-v0\niterations: 1\nmeta_batch_size: 4\n")

    env = {**environ, "PATH": f"{venv / 'bin'}{os.pathsep}{environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    env.pop("VIRTUAL_ENV", None)
    return {
        "wheel": wheel,
        "python": str(python),
        "metarl": str(venv / "bin" / "metarl"),
        "site": venv_site,
        "user": user,
        "env": env,
        "runs": work / "runs",
    }


def test_the_wheel_installs_the_families_and_agents_under_metarl_and_ships_the_presets(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    assert "metarl/envs/__init__.py" in names and "metarl/agents/maml_trpo.py" in names
    assert "metarl/configs/navigation2d-maml-trpo.yaml" in names
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"metarl"}


def test_the_users_own_envs_and_agents_packages_do_not_collide(installed):
    script = (
        "import envs, agents, metarl, metarl.envs, metarl.agents\n"
        "assert (envs.OWNER, envs.KIND, agents.OWNER, agents.KIND) == ('user', 'envs', 'user', 'agents')\n"
        "print(metarl.__file__)\n"
        "print(metarl.make_family('MetaRL/Navigation2D-v0').__class__.__name__, 'maml-trpo' in metarl.list_agents())\n"
    )
    output = run([installed["python"], "-c", script], installed["user"], installed["env"]).split("\n")
    assert Path(output[0]).is_relative_to(installed["site"])  # the wheel's package, not the clone or the source tree
    assert output[1] == "Navigation2D True"


def test_metarl_families_lists_the_suites_families(installed):
    output = run([installed["metarl"], "families"], installed["user"], installed["env"])
    assert "MetaRL/Navigation2D-v0" in output and "MetaRL/HalfCheetahVel-v0" in output


def test_metarl_train_finds_a_shipped_preset_and_a_users_preset_file(installed):
    runs = installed["runs"]
    output = run(
        [installed["metarl"], "train", "--preset", "navigation2d-maml-trpo", "iterations=1", f"run_root={runs / 'a'}"],
        installed["user"],
        installed["env"],
    )
    assert "run folder:" in output
    assert len(list((runs / "a").glob("*/results.json"))) == 1
    output = run(
        [installed["metarl"], "train", "--preset", "my-preset.yaml", "eval_interval=1", f"run_root={runs / 'b'}"],
        installed["user"],
        installed["env"],
    )
    (config,) = (runs / "b").glob("*/config.json")
    assert '"meta_batch_size": 4' in config.read_text()


def test_the_custom_family_example_runs_against_the_installed_wheel(installed):
    user, env = installed["user"], installed["env"]
    run([installed["python"], "custom_family_example.py"], user, env)
    output = run(
        [installed["metarl"], "--import", "custom_family_example.py", "demo", "--family", "MetaRL/LineGoal-v0"],
        user,
        env,
    )
    assert "MetaRL/LineGoal-v0" in output
