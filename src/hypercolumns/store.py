"""A documented path kept working: the same module object as its new home, named below."""

# moved to hypercolumns.io.store

import sys

from hypercolumns.io import store

sys.modules[__name__] = store
