"""The README's first example and the model guide's example run as written."""

import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_example_runs_with_fewer_steps():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Using it\n\n```python\n")[1].split("```")[0]
    for long, short in (("num_steps=4000", "num_steps=40"), ("burn_in=500", "burn_in=20"),
                        ("exchange_interval=100", "exchange_interval=10"),
                        # MNIST-1D at a fifth of its size: the generator's cost
                        ("load_mnist1d()", "load_mnist1d(num_samples=1000)")):  # fmt: skip
        assert long in block
        block = block.replace(long, short)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)
    assert type(scope["best"]).__name__ == "MLP"  # the nnx module, not variables
    assert scope["history"].rungs.shape == (2, 8)


def test_the_bring_your_own_model_example_runs():
    pytest.importorskip("equinox")
    runpy.run_path(str(ROOT / "docs" / "examples" / "bring_your_own_model.py"))
