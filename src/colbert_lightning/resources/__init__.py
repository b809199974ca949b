"""Files shipped with the package: the Cranfield collection and the BERT uncased vocabulary."""

from pathlib import Path


def resource_path(name: str) -> str:
    """Absolute path of a shipped resource, for configs (`${resource:cranfield}`).

    Raises:
        FileNotFoundError: if the package ships no such file or folder.
    """
    path = Path(__file__).parent / name
    if not path.exists():
        shipped = sorted(
            p.name for p in Path(__file__).parent.iterdir() if not p.name.startswith("_")
        )
        raise FileNotFoundError(f"no shipped resource {name!r}; the package ships {shipped}")
    return str(path)
