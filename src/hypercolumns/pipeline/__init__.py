"""Hypercolumns of whole data sets, into resumable on-disk stores (:mod:`hypercolumns.io.store`).

A run has three stages, kept apart so that another engine can drive them:

1. :func:`decode` turns a :class:`Source` (an image file, and a label mask for sparse points)
   into a :class:`Decoded` image: read, preprocessed, and for sparse stores its points sampled.
   It never raises: a file that cannot be read gives a ``Decoded`` with its ``error``.
2. An :class:`Extraction` (the model and the settings; one per process) turns a batch of decoded
   images into per-image :class:`~hypercolumns.io.store.ImageResult` or :class:`Failure`. Dense
   images too large for memory go to :meth:`Extraction.bands` instead, band by band.
3. A :class:`~hypercolumns.io.store.StoreWriter` takes the results and commits them one by one.

:func:`run` drives them with one of two engines and gives a :class:`RunSummary` at the end.
The local engine decodes in ``torch.utils.data.DataLoader`` worker processes while the model
runs in this one, batches grouped by image size. The Ray engine (:mod:`hypercolumns.pipeline._ray`)
decodes in Ray tasks and runs the model in a pool of Ray actors. Either way this process alone
writes and commits the store.

Points are sampled per image from a seed derived from the run's seed and the image's key, so
an image gets the same points whatever batch it lands in, in this run or a resumed one.

The modules, each on the ones below it (engines share, never import each other)::

    running      run(), RunSummary, the engine dispatch
    _local       the DataLoader engine          _ray   the Ray engine
    _sink        what every engine shares: the Sink, bands in the store
    extraction   Extraction, Failure
    decoding     DecodeOptions, Decoded, decode()
    settings     Settings
    sources      Source, expand_inputs(), what an image file is

This package re-exports their public names; import them from here.
"""

from hypercolumns.pipeline._local import batches, decoded
from hypercolumns.pipeline.decoding import Decoded, DecodeOptions, decode
from hypercolumns.pipeline.extraction import (
    DEFAULT_MAX_MEMORY,
    Extraction,
    Failure,
)
from hypercolumns.pipeline.running import Engine, Interrupted, RunSummary, run
from hypercolumns.pipeline.settings import Settings
from hypercolumns.pipeline.sources import (
    IMAGE_SUFFIXES,
    Source,
    expand_inputs,
    image_files,
    is_image_file,
)

__all__ = [
    "DEFAULT_MAX_MEMORY",
    "IMAGE_SUFFIXES",
    "DecodeOptions",
    "Decoded",
    "Engine",
    "Extraction",
    "Failure",
    "Interrupted",
    "RunSummary",
    "Settings",
    "Source",
    "batches",
    "decode",
    "decoded",
    "expand_inputs",
    "image_files",
    "is_image_file",
    "run",
]
