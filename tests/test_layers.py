"""The package layout is a promise (docs/design.md, section 1): no module imports from a higher layer."""
import re
from pathlib import Path

NORMLIB = Path(__file__).resolve().parent.parent / "normlib"
ALLOWED = {"core": {"core"}, "llm": {"core", "llm"}, "train": {"core", "train"},
           "gen": {"core", "llm", "gen"}, "eval": {"core", "llm", "train", "eval"}}


def test_no_module_imports_from_a_higher_layer():
    upward = []
    for path in sorted(NORMLIB.glob("*/*.py")):
        for match in re.finditer(r"normlib\.(\w+)", path.read_text()):
            if match.group(1) not in ALLOWED[path.parent.name]:
                upward.append(f"{path.relative_to(NORMLIB)} uses normlib.{match.group(1)}")
    assert upward == []
    assert sorted(p.name for p in NORMLIB.iterdir() if p.is_dir() and p.name != "__pycache__") == sorted(ALLOWED)
    assert [p.name for p in NORMLIB.glob("*.py")] == ["__init__.py"]  # every module lives in a layer
