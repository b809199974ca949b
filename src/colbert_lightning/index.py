"""`python -m colbert_lightning.index [key=value ...]`: see colbert_lightning.cli.index."""

from colbert_lightning.cli.index import main

if __name__ == "__main__":
    main()
