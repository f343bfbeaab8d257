"""A user's family under a namespace of its own (``MyLab/Windy-v0``) works wherever a family id is taken: the
registries, Gymnasium's make and make_vec, ``metarl families``, ``demo``, ``train`` (its run folder) and ``evaluate``;
and the documented hooks and batched fallback of a family's env say what is true."""

from __future__ import annotations

import importlib.util
import json
import pydoc
import re
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import tiny_values
from gymnasium.utils.env_checker import check_env

import metarl
from metarl.cli import main as cli_main
from metarl.registry import NAMESPACE, family_spec, list_families, make_family, register_family

ROOT = Path(__file__).resolve().parents[1]
WINDY_ID = "MyLab/Windy-v0"
WINDY_MODULE = '''
"""A user's family in a namespace of its own: a point on a line, pushed by a wind it cannot see."""

import dataclasses

import gymnasium as gym
import numpy as np

import metarl
from metarl.tasks import check_count, check_real


@dataclasses.dataclass(frozen=True)
class WindTask:
    wind: float


class WindyEnv(metarl.MetaEnv[WindTask]):
    def _reset_state(self) -> None:
        self._position = np.zeros(1, dtype=np.float32)

    def _observe(self) -> np.ndarray:
        return self._position.copy()

    def _step_state(self, action, uniforms):
        self._position = self._position + np.clip(action, -0.1, 0.1) + np.float32(self.task_params["wind"])
        return -abs(float(self._position[0])), False, {}


class Windy(metarl.TaskFamily[WindTask]):
    name = "Windy"
    task_type = WindTask
    env_class = WindyEnv

    def __init__(self, horizon: int = 10) -> None:
        self.horizon = check_count("horizon", horizon)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.action_space = gym.spaces.Box(-0.1, 0.1, (1,), np.float32)

    def sample_tasks(self, rng, num_tasks):
        return [WindTask(wind=float(w)) for w in rng.uniform(-0.05, 0.05, size=check_count("num_tasks", num_tasks))]

    def _check_task_values(self, task):
        check_real("task.wind", task.wind, -0.05, 0.05)


WINDY_ID = metarl.register_family(Windy, namespace="MyLab")
'''


def forget(*env_ids: str) -> None:
    """Drop families registered by a test (the registries have no public unregister), so that ``metarl demo`` in
    other tests rolls out the suite's own only."""
    for env_id in env_ids:
        metarl.registry._FAMILIES.pop(env_id, None)
        gym.registry.pop(env_id, None)


@pytest.fixture(scope="module")
def windy(tmp_path_factory):
    """The user's module, imported as ``metarl --import windy_family.py`` does (``--import`` of the same file is then
    a no-op)."""
    path = (tmp_path_factory.mktemp("user") / "windy_family.py").resolve()
    path.write_text(WINDY_MODULE)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    yield module, path
    forget(WINDY_ID)
    sys.modules.pop(path.stem, None)


# -- the registries and Gymnasium ---------------------------------------------------------------------------------
def test_a_family_registers_under_its_own_namespace(windy):
    module, _ = windy
    assert module.WINDY_ID == WINDY_ID
    assert WINDY_ID in list_families()
    assert family_spec(WINDY_ID).family_class is module.Windy
    assert make_family(WINDY_ID, horizon=3).horizon == 3
    assert f"{NAMESPACE}/Windy-v0" not in list_families()  # not under the suite's as well


def test_gymnasium_makes_it_and_vectorises_it(windy):
    module, _ = windy
    env = gym.make(WINDY_ID)
    check_env(env.unwrapped)
    env.reset(seed=0, options={"task": module.WindTask(wind=0.05)})
    _, reward, *_ = env.step(np.array([0.1], dtype=np.float32))
    assert reward == pytest.approx(-0.15)
    envs = gym.make_vec(WINDY_ID, num_envs=3, vectorization_mode="sync")
    assert isinstance(envs, gym.vector.SyncVectorEnv) and envs.num_envs == 3
    with pytest.raises(gym.error.Error):  # no native batched env: no vector entry point
        gym.make_vec(WINDY_ID, num_envs=3, vectorization_mode="vector_entry_point")


@pytest.mark.parametrize("namespace", ["", "My Lab", "1Lab", "My/Lab", "MyLab\n", "Lab.v2", 3, None])
def test_a_bad_namespace_is_refused_naming_it(windy, namespace):
    module, _ = windy
    with pytest.raises(ValueError, match=re.escape("namespace must be letters, digits, '_' or '-'")) as error:
        register_family(module.Windy, namespace=namespace)
    assert repr(namespace) in str(error.value)


def test_namespaces_keep_same_named_families_apart(windy):
    module, _ = windy

    class Windy(metarl.TaskFamily):  # another class with the same name and version
        name = "Windy"
        task_type = module.WindTask
        env_class = module.WindyEnv

        def __init__(self) -> None:
            self.horizon = 5
            self.observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
            self.action_space = gym.spaces.Box(-0.1, 0.1, (1,), np.float32)

        def sample_tasks(self, rng, num_tasks):
            return [module.WindTask(0.0)] * num_tasks

        def _check_task_values(self, task):
            pass

    with pytest.raises(ValueError, match=re.escape(f"{WINDY_ID} is already registered to windy_family.Windy")):
        register_family(Windy, namespace="MyLab")
    try:
        assert register_family(Windy, namespace="OtherLab") == "OtherLab/Windy-v0"
        assert register_family(Windy) == f"{NAMESPACE}/Windy-v0"  # the default namespace stays open to users
        assert make_family("OtherLab/Windy-v0").horizon == 5 and make_family(WINDY_ID).horizon == 10
    finally:
        forget("OtherLab/Windy-v0", f"{NAMESPACE}/Windy-v0")


# -- the command line ---------------------------------------------------------------------------------------------
def test_families_and_demo_take_it(windy, capsys):
    _, path = windy
    assert cli_main(["--import", str(path), "families"]) == 0
    assert any(line.startswith(WINDY_ID) for line in capsys.readouterr().out.splitlines())
    assert cli_main(["--import", str(path), "demo", "--family", WINDY_ID, "--tasks", "2"]) == 0
    assert WINDY_ID in capsys.readouterr().out


def test_train_and_evaluate_take_it(windy, tmp_path, capsys):
    _, path = windy
    values = tiny_values("maml-trpo", family=WINDY_ID, family_kwargs={"horizon": 5}, iterations=2, num_tasks=40)
    overrides = [f"{key}={json.dumps(value)}" for key, value in {**values, "run_root": str(tmp_path)}.items()]
    assert cli_main(["--import", str(path), "train", *overrides]) == 0
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.startswith("MyLab_Windy-v0__maml-trpo__0__")  # the "/" of the id is not a folder
    assert json.loads((run_dir / "config.json").read_text())["family"] == WINDY_ID
    capsys.readouterr()
    assert cli_main(["--import", str(path), "evaluate", str(run_dir), "--tasks", "2"]) == 0
    assert list((run_dir / "evaluation").glob("test-best.*"))


# -- the documented hooks and batched fallback --------------------------------------------------------------------
def snippet(markdown: str, name: str) -> str:
    """The python block after ``<!-- snippet: name ... -->`` in ``markdown``."""
    match = re.search(rf"<!-- snippet: {re.escape(name)}\b.*?-->\s*```python\n(.*?)```", markdown, re.DOTALL)
    assert match, f"no snippet {name!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def custom_family_example():
    """scripts/custom_family_example.py imported as the snippet does (``import custom_family_example``); forgotten
    afterwards if this module imported it (so that test_custom_family's own import registers it afresh)."""
    module = sys.modules.get("custom_family_example")
    if module is not None:
        yield module
        return
    path = ROOT / "scripts" / "custom_family_example.py"
    spec = importlib.util.spec_from_file_location("custom_family_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["custom_family_example"] = module
    spec.loader.exec_module(module)
    yield module
    forget(module.LINE_GOAL_ID)
    sys.modules.pop("custom_family_example", None)


def test_the_documented_batched_fallback_runs(custom_family_example):
    assert custom_family_example.LineGoal.vector_env_class is None
    code = snippet((ROOT / "docs" / "families.md").read_text(encoding="utf-8"), "vector-fallback")
    assert "set_vector_tasks" in code and "make_vec_env" in code and "gym.make_vec" in code
    namespace: dict = {}
    exec(compile(code, "docs/families.md", "exec"), namespace)  # its own asserts check the tasks took effect
    envs = namespace["envs"]
    assert isinstance(envs, gym.vector.SyncVectorEnv)
    assert all(task is not None for task in envs.get_attr("task"))


def test_the_env_documents_its_hooks_as_they_are():
    text = pydoc.render_doc(metarl.MetaEnv, renderer=pydoc.plaintext)
    for hook in (
        "_reset_state(self) -> None",
        "_observe(self) -> np.ndarray",
        "_step_state(self, action, uniforms: tuple[float, ...]) -> tuple[float, bool, dict]",
        "task_params",
        "checked but not clipped",
        "draws_per_step",
        "make_vec",
        "set_vector_tasks",
    ):
        assert hook in " ".join(text.split()), hook


def test_actions_reach_the_hook_unclipped_as_documented(custom_family_example):
    seen = []

    class Recording(custom_family_example.LineGoalEnv):
        def _step_state(self, action, uniforms):
            seen.append(action)
            return super()._step_state(action, uniforms)

    env = Recording(make_family("MetaRL/LineGoal-v0"))
    env.reset(seed=0)
    env.step(np.array([5.0], dtype=np.float64))  # far outside Box(-0.2, 0.2)
    assert seen[0].dtype == np.float32 and seen[0][0] == 5.0  # cast to the space's dtype, not clipped
    assert env.task_params["goal"].shape == () and env.task_params["goal"].dtype == np.float64
