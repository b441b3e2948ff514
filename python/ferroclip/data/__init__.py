"""Image–caption pairs from the formats datasets come in, read whole and checked before training.

CSV/TSV, JSON (a list or ``{"data": [...]}``), JSON Lines, the seed's folder layouts
(``captions.txt`` or a ``.txt`` per image), Hugging Face datasets (in memory, ``save_to_disk``
folders, parquet) and webdataset tar shards all come out as one :class:`CaptionDataset`:
every caption kept, bad rows listed with file and line instead of raised, and splits cut by
image so no image is in two of them.

Example::

    from ferroclip.data import load_pairs

    ds = load_pairs("data/dataset.csv")
    print(ds.summary())
    parts = ds.split(val=0.1, test=0.1, seed=42)
"""

from .columns import CAPTION_DEFAULTS, IMAGE_DEFAULTS, JSON_IMAGE_DEFAULTS
from .load import FORMATS, PairSource, load_pairs
from .pairs import BadRow, CaptionDataset, ImageCaptionPair, ImageRef, concat

__all__ = [
    "BadRow",
    "CAPTION_DEFAULTS",
    "CaptionDataset",
    "FORMATS",
    "IMAGE_DEFAULTS",
    "ImageCaptionPair",
    "ImageRef",
    "JSON_IMAGE_DEFAULTS",
    "PairSource",
    "concat",
    "load_pairs",
]
