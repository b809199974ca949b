"""Stages before supervised ColBERT training, for a model built from zero.

A WordPiece vocabulary trained on the corpora (``vocabulary``) and masked-language-model
pretraining of the encoder (``mlm``). Label-free contrastive pretraining is a data option
(``data=crops``) of the usual training run, and ``colbert_lightning.pipeline`` chains the stages.
"""
