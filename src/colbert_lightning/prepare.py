"""`python -m colbert_lightning.prepare`: see :mod:`colbert_lightning.cli.prepare`."""

from colbert_lightning.cli.prepare import main

if __name__ == "__main__":
    main()
