"""Teacher → student: distil a fitted model into a smaller, faster one.

Read it as the steps :func:`distill` takes:

1. **check** that teacher and student can share inputs: the same modality; each model normalises
   inside itself from its own recorded preprocessing; the teacher, fed the validation split rebuilt
   from its run, scores what its own fit measured (a different size, normalisation, split or data would
   not: super-gradients #183, lightly-train #901 are such silent failures);
2. **the transfer set** (``transfer_set.py``): labelled examples with augmented views, plus an optional
   unlabelled pool, each row's teacher output computed once and cached;
3. **the direct student**: the same student, seed and views, trained on the labels alone with at most the
   same number of steps: what distillation is measured against (KD can hurt: knowledge-distillation-
   pytorch #18, distiller #133);
4. **T and alpha** chosen on the validation split when not given (short runs of each candidate);
5. **the student**, trained with :class:`~headstart.distill.loss.DistillObjective` in the usual loop
   (checkpointed after every epoch: a killed run resumes);
6. **the report**: accuracies on the validation split, the distillation ratio, parameters, file size and
   CPU latency / throughput of teacher and student.

The estimator (``TransferClassifier.distill``) reads the data, calls this, and saves the student as a
normal run; the ``distillation`` record of its ``headstart.json`` holds the report.
"""
from __future__ import annotations

from headstart.distill.config import DistillConfig

__all__ = ["DistillConfig", "DistillObjective", "Distilled", "Teacher", "distill", "soft_target_loss",
           "student_config"]
_LAZY = {"DistillObjective": "loss", "soft_target_loss": "loss", "Teacher": "transfer_set",
         "Distilled": "pipeline", "distill": "pipeline", "student_config": "pipeline"}


def __getattr__(name: str):
    """The training parts load torch: imported on first use, so ``headstart --help`` (which reads
    :class:`DistillConfig` for its flags) stays instant."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"headstart.distill.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'headstart.distill' has no attribute {name!r}")
