"""Which packages a wheel ships; the rest of the build is declared in pyproject.toml.

`router.simulation` (the simulator behind `scripts/simulate` and the benchmark's Belady bound)
is a development tool run from a checkout, so a wheel leaves it out unless asked:

    MODELPLEX_WITH_SIMULATION=1 pip wheel .      (or pip install .) ships it too

The choice is made here because it depends on the environment, which pyproject.toml's
`[tool.setuptools.packages.find]` cannot express (and a packages table there would override
this file). An editable install (`scripts/*`) imports `router.simulation` from the checkout
either way.
"""

import os

from setuptools import find_packages, setup

PACKAGES = ["router*", "replica*", "common*", "examples*"]
SIMULATION = ["router.simulation*"]
WITH_SIMULATION = os.environ.get("MODELPLEX_WITH_SIMULATION") == "1"

setup(packages=find_packages(include=PACKAGES, exclude=[] if WITH_SIMULATION else SIMULATION))
