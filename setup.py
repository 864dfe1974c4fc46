"""Package list: poolbench's own packages, and the repository's impls/ folder installed as poolbench.impls.

Why a setup.py beside pyproject.toml: setuptools' package discovery cannot find a package that lives
outside its parent's folder, so the mapped plugin packages are listed here from the folder itself
(a new sub-package of impls/ needs no edit).
"""
from setuptools import find_packages, setup

PLUGINS = "poolbench.impls"

setup(
    packages=find_packages(include=["poolbench", "poolbench.*"])
    + [PLUGINS] + [f"{PLUGINS}.{name}" for name in find_packages("impls")],
    package_dir={PLUGINS: "impls"},
)
