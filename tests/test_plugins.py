"""Worlds are plugins: the core never names one, and the embedded worlds arrive through the same entry point
a third party's world would use."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import fairbench

CORE = Path(fairbench.__file__).parent
WORLD = CORE / "synthface"


def test_no_core_module_names_or_imports_a_world():
    named = []
    for path in sorted(CORE.rglob("*.py")):
        if WORLD in path.parents:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search("synthface", line, re.IGNORECASE):
                named.append(f"{path.relative_to(CORE)}:{number}: {line.strip()}")
    assert named == ['config.py:15: DEFAULT_MODEL = "synthface-vl"']  # the default model's name, in one place


def test_no_method_imports_a_world_or_asks_for_a_pipeline_class():
    # methods ask a pipeline for what it can do (own_clip, fixed_size, text_states, reference_images)
    import fairbench.baselines

    found = []
    folders = (Path(fairbench.baselines.__file__).parent, CORE / "methods")
    for path in [p for folder in folders for p in sorted(folder.rglob("*.py"))]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if re.search(r"(import|from)\s+\S*synthface|SynthFacePipeline|__name__\s*==", line):
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert found == []


def test_the_embedded_worlds_arrive_through_the_entry_point_alone():
    from importlib.metadata import entry_points

    (world,) = entry_points(group="fairbench.worlds")
    assert (world.name, world.value) == ("synthface", "fairbench.synthface.plugin:register")
    # with the entry point hidden, fairbench knows no world: every name the plugin adds is unknown
    probe = (
        "import importlib.metadata as m\n"
        "real = m.entry_points\n"
        "m.entry_points = lambda **kw: [] if kw.get('group') == 'fairbench.worlds' else real(**kw)\n"
        "import fairbench.registry as r; r.entry_points = m.entry_points\n"
        "from fairbench.models import MODELS, PIPELINES\n"
        "from fairbench.classifiers import CLASSIFIERS\n"
        "from fairbench.faces import DETECTORS\n"
        "from fairbench.metrics.features import EXTRACTORS\n"
        "from fairbench.models.dual_encoder import DUAL_ENCODERS\n"
        "print(sorted(n for reg in (MODELS, PIPELINES, CLASSIFIERS, DETECTORS, EXTRACTORS, DUAL_ENCODERS)\n"
        "             for n in reg.names() if 'synth' in n.lower()))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from fairbench.models import MODELS, PIPELINES

    assert "synthface-vl" in MODELS and "SynthFacePipeline" in PIPELINES  # and with it, they are all there


def test_the_distribution_installs_only_the_fairbench_namespace():
    import tomllib

    config = tomllib.loads((CORE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    tool = config["tool"]["setuptools"]
    assert {p.split(".")[0] for p in tool["packages"]} == {"fairbench"}  # no top-level baselines or prompts
    assert tool["package-dir"] == {"fairbench.baselines": "baselines", "fairbench.prompt_data": "prompts"}
    plugins = config["project"]["entry-points"]
    assert all(v.startswith("fairbench.") for group in plugins.values() for v in group.values())
    # every folder of the package that holds Python code is listed (a missing one would not be installed)
    code = {p.parent.relative_to(CORE.parent).as_posix().replace("/", ".") for p in CORE.rglob("*.py")}
    assert code <= set(tool["packages"])


def test_the_world_building_lab_is_not_part_of_the_package():
    """Training, install and grid code lives in lab/ (run from a checkout): the package holds no training
    module and imports nothing from the lab, and the distribution lists no lab package."""
    import tomllib

    tool = tomllib.loads((CORE.parent / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert not any(p.split(".")[0] == "lab" for p in tool["packages"])
    world = CORE / "synthface"
    assert not {"train.py", "clip_train.py", "grid.py", "cli.py", "assets.py", "data.py"} & {
        p.name for p in world.glob("*.py")}
    for path in CORE.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from|import) lab\b", text, flags=re.M), path
        assert "def train_" not in text or path.parent.name != "synthface", path

def test_a_mistyped_flag_loads_no_world_and_a_lookup_loads_no_pipeline_library():
    # the parser takes plugin subcommands from their own group; a world's register() imports no diffusers or
    # transformers (they load with the world's pipeline or CLIP)
    probe = (
        "import sys\n"
        "from fairbench.cli.main import main\n"
        "code = main(['run', '--n', 'nan'])\n"
        "print(code, 'fairbench.synthface.plugin' in sys.modules)\n"
        "from fairbench.models import MODELS\n"
        "MODELS.get('synthface-vl')\n"
        "print('fairbench.synthface.plugin' in sys.modules, 'diffusers' in sys.modules, 'transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["2 False", "True False False"]
