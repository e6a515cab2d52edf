"""polyheads: classifier heads of any embedding geometry for any timm model."""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "polyheads" / "version.py").read_text()).group(1)

setup(
    name="polyheads",
    version=VERSION,
    description="Euclidean, hyperbolic, spherical, stochastic (vMF) and fixed-polytope classifier heads for timm models",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["polyheads", "polyheads.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "timm>=1.0.23",  # timm.task (used by the train.py runner) appeared in 1.0.23
        "geoopt>=0.5",
        "einops",
        "scikit-learn>=1.6",
        "numpy",
        "scipy",
        "tqdm",
        "pyyaml",
        "matplotlib",
    ],
    extras_require={
        # what the test suite needs beyond the runtime dependencies
        "dev": ["pytest>=8", "pytest-xdist", "mpmath", "pandas", "pytorch-metric-learning>=2.5", "onnx", "onnxscript", "onnxruntime"],
        # references that only the benchmarks compare against
        "bench": ["pytorch-metric-learning>=2.5", "netcal"],
    },
    entry_points={
        "console_scripts": [],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
