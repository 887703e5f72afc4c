"""The package map of the one distribution: three folders, one import root (``shipyard``).

Everything else is in pyproject.toml. The packages are found under each folder rather than listed,
so a new component or module folder cannot be left out of the wheel (a list by hand once dropped
``shipyard.components.critique_revise``); ``tests/unit/test_packaging.py`` builds the wheel and checks.
"""

from setuptools import find_packages, setup

PACKAGE_DIRS = {
    "shipyard": "platform/shipyard",
    "shipyard.components": "components",
    "shipyard.pipelines": "pipelines",
}


def packages() -> list[str]:
    """Every package under the three roots, named as it is imported."""
    found = []
    for root, folder in PACKAGE_DIRS.items():
        found.append(root)
        found += [f"{root}.{sub}" for sub in find_packages(folder)]
    return sorted(set(found))


setup(packages=packages(), package_dir=PACKAGE_DIRS)
