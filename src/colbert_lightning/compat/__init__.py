"""Compatibility with RAGatouille: its ``RAGTrainer`` API and its raw training-data formats."""
