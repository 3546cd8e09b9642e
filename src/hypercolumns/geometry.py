"""A documented path kept working: the same module object as its new home, named below."""

# moved to hypercolumns.rf.geometry

import sys

from hypercolumns.rf import geometry

sys.modules[__name__] = geometry
