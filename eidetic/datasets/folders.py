"""The data folder a user names (``--data-dir``): refused, with what to do, where it is a file or
does not exist, before a loader looks inside it."""

from __future__ import annotations

from pathlib import Path

HINT = ("give the folder that holds the data (--data-dir on the command line), or download=True (--download) to "
        "fetch it with torchvision")


def require_folder(root: Path, title: str, expected: str) -> None:
    """Raise ``FileNotFoundError`` unless ``root`` is a folder: naming it (and, if it is relative,
    where it resolves to), what ``title``'s data should look like there (``expected``) and
    :data:`HINT`.

    Example::

        require_folder(Path("data"), "MNIST", "the IDX files t10k-images-idx3-ubyte[.gz], ...")
    """
    if root.is_file():
        raise FileNotFoundError(f"'{root}' is a file, not a data folder: give the folder that holds the {title} data "
                                "(--data-dir on the command line)")
    if not root.is_dir():
        where = f"'{root}'" if root.is_absolute() else f"'{root}' ({root.resolve()})"
        raise FileNotFoundError(f"{title} data folder {where} does not exist: expected {expected}; {HINT}")
