"""A documented path kept working: the same module object as its new home, named below."""

# moved to hypercolumns.viz.plot

import sys

from hypercolumns.viz import plot

sys.modules[__name__] = plot
