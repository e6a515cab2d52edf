"""A real third-party plugin: a distribution that declares the entry point ``polyheads.heads`` is built
and pip-installed offline into a temporary folder, then its head is created by name in a fresh process."""
import subprocess
import sys
import textwrap

PLUGIN_SETUP = """
from setuptools import setup
setup(
    name="polyheads-demo-plugin",
    version="0.0.1",
    py_modules=["demo_plugin_heads"],
    entry_points={"polyheads.heads": ["demo_scaled = demo_plugin_heads:ScaledStandardHead"]},
)
"""

PLUGIN_MODULE = """
import torch
from polyheads.heads import StandardHead


class ScaledStandardHead(StandardHead):
    \"\"\"The standard head with logits multiplied by a constant (a plugin for the test).\"\"\"

    def __init__(self, in_features, num_classes, dim=None, *, factor=2.0):
        super().__init__(in_features, num_classes, dim)
        self.factor = factor

    def logits_from_embedding(self, z):
        return self.factor * super().logits_from_embedding(z)
"""

CHECK = """
import polyheads, timm, torch
assert "demo_scaled" in polyheads.list_heads(), polyheads.list_heads()
head = polyheads.create_head("demo_scaled", 8, 3, factor=3.0)
assert type(head).__name__ == "ScaledStandardHead" and head.head_name == "demo_scaled"
x = torch.randn(2, 8)
plain = x @ head.embedding.weight.t() + head.embedding.bias
assert torch.allclose(head(x), 3.0 * plain @ head.weight.t(), atol=1e-6)
model = timm.create_model("resnet10t", num_classes=3, head="demo_scaled", head_kwargs={"factor": 3.0})
assert type(model.fc).__name__ == "ScaledStandardHead"
print("plugin ok")
"""


def test_entry_point_plugin_is_found_by_name(tmp_path):
    source = tmp_path / "plugin"
    source.mkdir()
    (source / "setup.py").write_text(textwrap.dedent(PLUGIN_SETUP))
    (source / "demo_plugin_heads.py").write_text(textwrap.dedent(PLUGIN_MODULE))
    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        capture_output=True, text=True,
    )
    assert install.returncode == 0, install.stderr
    assert any(p.name.startswith("polyheads_demo_plugin") and p.suffix == ".dist-info" for p in target.iterdir())

    env_path = f"{target}"
    run = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": env_path})
    assert run.returncode == 0, run.stderr
    assert "plugin ok" in run.stdout

    # without the plugin on the path, the name is unknown and the error says so
    missing = subprocess.run([sys.executable, "-c", "import polyheads; polyheads.create_head('demo_scaled', 8, 3)"],
                             capture_output=True, text=True)
    assert missing.returncode != 0 and "unknown head 'demo_scaled'" in missing.stderr
