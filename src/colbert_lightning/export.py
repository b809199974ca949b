"""`python -m colbert_lightning.export checkpoint=... format=... OUT`: see cli.export."""

from colbert_lightning.cli.export import main

if __name__ == "__main__":
    main()
