"""Data: sources (folders, CSVs, arrays) → decoded, preprocessed uint8 tensors."""
from headstart.data.images import (
           BadImage,
           Decoded,
           augment,
           decode_all,
           encode_labels,
           iter_decoded,
           load_image,
           preprocess,
)
from headstart.data.sources import (
           Examples,
           as_examples,
           check_duplicates,
           class_list,
           stratified_split,
)

__all__ = ["BadImage", "Decoded", "Examples", "as_examples", "augment", "check_duplicates", "class_list",
           "decode_all", "encode_labels", "iter_decoded", "load_image", "preprocess", "stratified_split"]
