"""`python -m colbert_lightning.evaluate [key=value ...]`: see colbert_lightning.cli.evaluate."""

from colbert_lightning.cli.evaluate import main

if __name__ == "__main__":
    main()
