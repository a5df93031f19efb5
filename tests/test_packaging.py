"""`pip install .` must ship tficon.widgets (kept at the repo top as widgets/) and the toy model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_widgets_toy_model_and_cli(tmp_path):
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path), *isolation],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("tficon-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "tficon/widgets/__init__.py" in names and "tficon/widgets/explorer.py" in names
    assert "tficon/toy/model/model_index.json" in names and "tficon/toy/model/tficon.json" in names
    for part in ("unet", "vae", "text_encoder"):
        assert any(n.startswith(f"tficon/toy/model/{part}/") and n.endswith(".safetensors") for n in names), part
    assert any(n.startswith("tficon/toy/model/tokenizer/") for n in names)
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "tficon = tficon.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    assert not any(n.startswith(("tests/", "notebooks/", "widgets/")) for n in names)
    # every package folder of the source tree is in the wheel (pyproject lists them by hand)
    for init in (ROOT / "tficon").rglob("__init__.py"):
        assert str(init.relative_to(ROOT)) in names, init
