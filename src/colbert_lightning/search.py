"""`python -m colbert_lightning.search [key=value ...]`: see colbert_lightning.cli.search."""

from colbert_lightning.cli.search import main

if __name__ == "__main__":
    main()
