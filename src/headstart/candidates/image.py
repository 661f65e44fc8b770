"""The image candidate: the from-scratch net every image run trains as its baseline, as a saved run."""
from __future__ import annotations

import numpy as np

from headstart.candidates import Candidate
from headstart.data.preprocess import PreprocessConfig
from headstart.encoders.base import tensors_sha256
from headstart.encoders.model import TransferModel
from headstart.encoders.scratch_source import SCRATCH_PREPROCESS, scratch_stages


def scratch_candidate(net, report: dict, clf) -> Candidate:
    """:class:`~headstart.modalities.scratch.ScratchNet` (its best-validation-loss epoch) as a TransferModel.

    It learnt from the transfer model's decoded pixels shrunk to ``report["input_size"]``; its own
    preprocessing keeps the transfer model's crop fraction and interpolation, so images read from disk
    at that size frame the object the same way (the candidate is scored that way before it is chosen).
    """
    transfer: PreprocessConfig = clf.preprocess_
    preprocess = PreprocessConfig(input_size=int(report["input_size"]), mean=SCRATCH_PREPROCESS.mean,
                                  std=SCRATCH_PREPROCESS.std, interpolation=transfer.interpolation,
                                  crop_pct=transfer.crop_pct)
    body = net.body
    model = TransferModel(body, body.num_features, len(clf.classes_), preprocess, stages=scratch_stages(body))
    model.head[-1].load_state_dict(net.head.state_dict())
    model.to(next(net.parameters()).device).eval()
    info = {"spec": "scratch:small", "architecture": "scratch:small",
            "weights_sha256": tensors_sha256(body.state_dict()), "num_features": body.num_features,
            "num_params": sum(p.numel() for p in body.parameters()), "stages": [s.name for s in model.stages],
            "notes": [f"trained from scratch on the same split for {report['seconds']:.0f}s "
                      f"({report['epochs']} epochs at {report['input_size']} px), no pretraining"]}
    return Candidate("scratch", "a small net trained from scratch", np.zeros(0, bool), report["seconds"],
                     model=model, preprocess=preprocess, tokenizer=None, backbone_info=info,
                     details={"params": report["params"], "epochs": report["epochs"],
                              "input_size": report["input_size"]})
