"""`root/<class>/<image>`: the layout most users' labelled chips already have."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar, Literal

from components import constants as C
from components.data.records import Rejection, SourceItem, safe_key
from components.data.sources.base import Source, SourceConfig

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def read_file_bytes(path: str) -> bytes:
    """Read a whole file, turning OS errors into `unreadable` rejections."""
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise Rejection(C.REJECT_UNREADABLE, f"{path}: {exc.strerror or exc}") from exc


class FolderConfig(SourceConfig):
    source: Literal["folder"] = "folder"
    root: str
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS
    follow_symlinks: bool = False


class FolderSource(Source):
    """Every file below `root/<class>/` is an input; its class is the first directory name.

    Files directly under `root` have no class and files with other extensions are not
    images: both are listed as rejections rather than skipped, so the summary accounts for
    every file in the tree.
    """

    name: ClassVar[str] = "folder"
    Config: ClassVar[type[SourceConfig]] = FolderConfig
    config: FolderConfig   # what `Source.__init__` stores: this source's own config

    def list_items(self) -> list[SourceItem]:
        root = Path(self.config.root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"data.root {str(root)!r} is not a directory (source 'folder' expects root/<class>/<image>)")
        extensions = tuple(e.lower() for e in self.config.extensions)
        items: list[SourceItem] = []

        def record_unreadable_dir(error: OSError) -> None:
            # os.walk skips directories it cannot list; record them instead of losing them.
            relative = Path(error.filename).relative_to(root).as_posix()
            parts = relative.split("/")
            items.append(SourceItem(
                key=safe_key(relative), label=parts[0] if len(parts) > 1 else None,
                locator={"path": error.filename}, metadata={C.SOURCE: relative},
                reject_reason=C.REJECT_UNREADABLE, reject_detail=f"directory cannot be listed: {error.strerror}",
            ))

        # Plain strings, not pathlib, per file: listing a million chips is driver time that no
        # worker can share (pathlib cost ~25 µs a file, a third of decoding a 32×32 chip).
        root_text = str(root)
        walk = os.walk(root_text, followlinks=self.config.follow_symlinks, onerror=record_unreadable_dir)
        for dirpath, dirnames, filenames in walk:
            dirnames.sort()
            folder = Path(dirpath).relative_to(root).as_posix()
            prefix = "" if folder == "." else f"{folder}/"
            label = prefix.split("/", 1)[0] or None
            for filename in sorted(filenames):
                relative = prefix + filename
                item = SourceItem(
                    key=safe_key(relative),
                    label=label,
                    locator={"path": os.path.join(dirpath, filename)},
                    metadata={C.SOURCE: relative},
                )
                if item.label is None:
                    item.reject_reason, item.reject_detail = C.REJECT_MISSING_LABEL, "file is not inside a class folder"
                elif not filename.lower().endswith(extensions):
                    item.reject_reason = C.REJECT_UNKNOWN_FORMAT
                    item.reject_detail = f"extension not in {list(extensions)}"
                items.append(item)
        return items

    def load(self, item: SourceItem) -> bytes:
        return read_file_bytes(item.locator["path"])
