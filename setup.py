"""memmodel: a selective state-space model with external memory, as fused Triton kernels.

One distribution. `kernels/` installs as the subpackage `memmodel.kernels`, so the import
name never collides with other packages called `kernels`.
"""

from setuptools import find_packages, setup

KERNEL_PACKAGES = ["memmodel.kernels." + p for p in find_packages("kernels")]
# The language / vision / biology tasks and the classification metrics: scikit-learn (its
# metrics and the 8x8 digits it ships), pyjaspar (the JASPAR motif matrices, shipped as
# SQLite files: nothing is downloaded). The tests need them too, and matplotlib for the
# confusion-matrix figure.
DOMAINS = ["scikit-learn", "pyjaspar>=4"]

setup(
    name="memmodel",
    version="0.1.0",
    description=(
        "Selective state-space model with working and long-term memory: "
        "fused Triton kernels and PyTorch modules"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    # every subpackage of memmodel/ (tasks, controllers, ...), and kernels/ as memmodel.kernels
    packages=find_packages(include=["memmodel", "memmodel.*"]) + ["memmodel.kernels"]
    + KERNEL_PACKAGES,
    package_dir={"memmodel": "memmodel", "memmodel.kernels": "kernels"},
    install_requires=[
        # A range, never a pinned CPU build: a GPU machine keeps its CUDA torch.
        "torch>=2.4",
        "triton>=3.1",
        "numpy",
        "safetensors",  # save_pretrained / from_pretrained, loaded without pickle
        "tqdm",  # progress bars of training, evaluation and benchmarks
    ],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "hypothesis", "ruff", "pyyaml", *DOMAINS,
                 "matplotlib"],
        "bench": ["pytest-benchmark"],
        "plot": ["matplotlib"],
        "yaml": ["pyyaml"],  # YAML config files for the `memmodel` command
        "domains": DOMAINS,
    },
    entry_points={"console_scripts": ["memmodel = memmodel.training.cli:main"]},
)
