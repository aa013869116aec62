"""Dataset readers. Importing this package imports every module in it, so each reader
registers itself; a new dataset is one new file here, with no list to update.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):  # sorted by file name
    importlib.import_module(f"{__name__}.{_module.name}")
