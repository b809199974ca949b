"""`python -m colbert_lightning.train [key=value ...]`: see colbert_lightning.cli.train."""

from colbert_lightning.cli.train import main

if __name__ == "__main__":
    main()
