"""Text classification: loading texts and labels from files, DataFrames and Hugging Face datasets."""
