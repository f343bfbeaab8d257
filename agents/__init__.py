"""Meta-RL agents and the baselines they are compared against.

Importing this package imports every module in it; each algorithm's module registers itself
(``metarl.register_agent`` at its end), so that adding an algorithm is adding a file.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
