"""The real Fashion-MNIST, from Debian's `dataset-fashion-mnist` package (no downloads).

Each item records which official file it came from (`metadata["source_split"]`: "train" for
the 60k training images, "test" for the 10k t10k images), so `split.protocol: images` can
reproduce the published protocol: train on the training file, retrieve within the test file.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np

from components import constants as C
from components.data.records import SourceItem
from components.data.sources.base import Source, SourceConfig

DEBIAN_ROOT = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = (
    "t_shirt_top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle_boot",
)
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class FashionMnistConfig(SourceConfig):
    source: Literal["fashion_mnist"] = "fashion_mnist"
    root: str = DEBIAN_ROOT
    subset: Literal["train", "test", "all"] = "all"
    limit: int | None = None   # first N images of each subset (quick runs)


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (the MNIST format): magic, dimensions, then uint8 data."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {shape}, got {array.size} values")
    return array.reshape(shape)


@functools.lru_cache(maxsize=4)
def load_subset(root: str, subset: str) -> tuple[np.ndarray, np.ndarray]:
    images_file, labels_file = FILES[subset]
    return read_idx(Path(root) / images_file), read_idx(Path(root) / labels_file)


class FashionMnistSource(Source):
    name: ClassVar[str] = "fashion_mnist"
    Config: ClassVar[type[SourceConfig]] = FashionMnistConfig
    upright: ClassVar[bool] = True   # garments photographed upright: no rotations (flips are fine)
    config: FashionMnistConfig   # what `Source.__init__` stores: this source's own config

    @property
    def natural_size(self) -> int:
        return 28

    def subsets(self) -> list[str]:
        return ["train", "test"] if self.config.subset == "all" else [self.config.subset]

    def check_installed(self) -> None:
        root = Path(self.config.root)
        missing = [f for s in self.subsets() for f in FILES[s] if not (root / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"Fashion-MNIST not found under data.root={str(root)!r} (missing {missing}). Install it with "
                "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; it goes to "
                f"{DEBIAN_ROOT}), or point data.root at a folder holding the four *-ubyte.gz files."
            )

    def list_items(self) -> list[SourceItem]:
        self.check_installed()
        items = []
        for subset in self.subsets():
            _, labels = load_subset(self.config.root, subset)
            count = len(labels) if self.config.limit is None else min(self.config.limit, len(labels))
            for index in range(count):
                items.append(SourceItem(
                    key=f"{subset}/{index:05d}",
                    label=CLASS_NAMES[int(labels[index])],
                    locator={"subset": subset, "index": index},
                    # The official train/test files: split.protocol=images retrieves within "test".
                    metadata={C.SOURCE: f"fashion-mnist/{subset}[{index}]", C.SOURCE_SPLIT: subset},
                ))
        return items

    def load(self, item: SourceItem) -> np.ndarray:
        images, _ = load_subset(self.config.root, item.locator["subset"])
        return images[item.locator["index"]]
