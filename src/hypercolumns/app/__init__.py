"""The browser explorer (``hypercolumns explore``; Gradio comes with the ``app`` extra).

:mod:`~hypercolumns.app.state` holds the model and the image on show, planned once per image
size; :mod:`~hypercolumns.app.handlers` computes each view from a state and a pixel, without a
browser; :mod:`~hypercolumns.app.page` lays out the Gradio page and serves it (Gradio is
imported there only, when a page is built); :mod:`~hypercolumns.app.uploads` checks uploads.
"""

from hypercolumns.app.state import Explorer, State
from hypercolumns.app.uploads import Limits

__all__ = ["Explorer", "Limits", "State"]
