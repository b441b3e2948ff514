"""Scale-out: embedding on Ray Data (``pip install 'ferroclip[ray]'``).

Ray is imported only when a job runs, so ``import ferroclip.distributed`` works without it
and the error when it is missing names the extra to install.
"""

from .embed import EmbedSummary, ImageEmbedder, embed_dataset
from .shards import MANIFEST, find_output_dir
from .sources import DatasetSource, Item, collect_items

__all__ = ["DatasetSource", "EmbedSummary", "ImageEmbedder", "Item", "MANIFEST", "collect_items", "embed_dataset", "find_output_dir"]
