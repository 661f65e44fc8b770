"""How much to transfer: a per-stage profile of a backbone on the user's data, and a plan from it.

For every stage the profile pools the stage's output over space and measures
* how useful it is for the task: LogME and cross-validated linear-probe accuracy on those features;
* how far the user's images are from natural photos *as seen by that stage*: the proxy A-distance
  (Ben-David et al., 2007) of a domain classifier separating the user's images from a fixed reference
  set of natural photographs (scikit-image's sample photos, randomly cropped). We chose a domain
  classifier over linear CKA because CKA compares two representations of the *same* inputs, while
  here the question is how different two *sets of inputs* look to the same layer. 0 means the stage
  cannot tell them apart (its features are general for this data); 2 means perfectly separable.

The planner turns that into a strategy (rules documented in :func:`make_plan`).
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from headstart.assess import transferability as T
from headstart.data import as_examples, decode_all, stratified_split
from headstart.device import default_device, resolve_precision
from headstart.encoders.base import tensors_sha256
from headstart.encoders.chain import sequential_chain, stage_chain_ends
from headstart.encoders.model import TransferModel
from headstart.errors import HeadstartError
from headstart.features.cache import feature_key, pixels_sha256
from headstart.features.engine import OpenVinoGraph, engine_label, resolve_engine
from headstart.features.fastpath import OPENVINO_MIN_COSINE, cast_for_cpu, folded_copy
from headstart.storage import atomic_path, cache_dir

log = logging.getLogger("headstart")
REFERENCE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "cat", "camera", "coins", "moon", "brick",
                    "grass", "gravel", "hubble_deep_field")


def reference_images(n: int = 96, seed: int = 0) -> list[np.ndarray]:
    """``n`` random crops (30-100 % of the side, random flips) of scikit-image's natural sample photos."""
    try:
        import skimage.data
    except ImportError as exc:
        raise HeadstartError("The domain-similarity profile needs scikit-image: pip install 'headstart[select]'.") from exc
    rng = np.random.default_rng(seed)
    photos = [getattr(skimage.data, name)() for name in REFERENCE_PHOTOS]
    crops = []
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        side = int(min(h, w) * rng.uniform(0.3, 1.0))
        top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
        crop = img[top:top + side, left:left + side]
        crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return crops


@torch.no_grad()
def stage_features(model, stages, pixels: torch.Tensor, *, precision: str, device, batch_size: int = 64) -> list[np.ndarray]:
    """Spatially pooled output of every stage, shape (N, C_stage) each, in one pass per batch.

    On a CPU this runs the inference fast path of :class:`headstart.features.fastpath.FeatureExtractor` on a
    private copy: BatchNorm folded (checked against the original on the first images), bf16 weights
    when ``precision="bf16"``, channels_last; or, where the engine is OpenVINO (see
    :func:`headstart.features.engine.resolve_engine`), one OpenVINO graph with an output per stage,
    checked against fp32 torch on the first images like the extractor's.
    """
    chain = sequential_chain(model.backbone)
    if chain is None:
        raise HeadstartError("A layer-wise profile needs a backbone whose forward is a chain of stages "
                             "(CNNs such as EfficientNet, MobileNet, ResNet).")
    ends = stage_chain_ends(chain, stages)
    was_training = model.training
    model.eval()  # before any forward: BatchNorm in train mode would update its running statistics
    try:
        if resolve_engine(None, modality="image", device=torch.device(device), n_images=len(pixels)) == "openvino":
            feats = _openvino_stages(model, chain, ends, pixels, precision, batch_size)
            if feats is not None:
                return feats
        modules, dtype, channels_last, autocast = _fast_chain(model, chain, pixels[:2], precision, device)
        return _run_chain(model, modules, ends, pixels, dtype=dtype, channels_last=channels_last,
                          autocast=autocast, device=device, batch_size=batch_size)
    finally:
        model.train(was_training)


class _StageGraph(torch.nn.Module):
    """uint8 pixels → the spatially pooled output of each stage (a tuple), for OpenVINO to compile."""

    def __init__(self, model, chain, ends):
        super().__init__()
        backbone = copy.deepcopy(model.backbone).eval()
        self.chain = torch.nn.ModuleList(backbone.get_submodule(name) for name, _ in chain)
        self.ends = list(ends)
        self.register_buffer("mean", model.mean.detach().clone().float())
        self.register_buffer("std", model.std.detach().clone().float())

    def forward(self, x):
        x = (x.float() / 255.0 - self.mean) / self.std
        outs = {}
        for j, m in enumerate(self.chain):
            x = m(x)
            if j in self.ends:
                outs[j] = x.mean((2, 3)) if x.dim() == 4 else x
        return tuple(outs[e] for e in self.ends)


def _openvino_stages(model, chain, ends, pixels, precision, batch_size) -> list[np.ndarray] | None:
    """Every stage's pooled features from one OpenVINO graph, or None (logged) when it fails or disagrees."""
    graph_module = _StageGraph(model, chain, ends).eval()
    probe = pixels[:4].cpu()
    try:
        graph = OpenVinoGraph(graph_module, probe, precision)
        got = graph(probe)
    except Exception as exc:  # an op OpenVINO cannot convert: the torch path is always correct
        log.warning("OpenVINO could not run the stage profile (%s); using torch", type(exc).__name__)
        return None
    with torch.inference_mode():
        ref = graph_module(probe)
    cos = min(float(torch.nn.functional.cosine_similarity(torch.from_numpy(g), r.float(), dim=1).min())
              for g, r in zip(got, ref))
    if not cos >= OPENVINO_MIN_COSINE:
        log.warning("OpenVINO's stage features disagreed with fp32 torch (min cosine %.4f); using torch", cos)
        return None
    out: list[list[np.ndarray]] = [[] for _ in ends]
    for i in range(0, len(pixels), batch_size):
        for s, arr in enumerate(graph(pixels[i:i + batch_size])):
            out[s].append(arr)
    return [np.concatenate(o) for o in out]


def _run_chain(model, modules, ends, pixels, *, dtype, channels_last, autocast, device, batch_size):
    out: list[list[torch.Tensor]] = [[] for _ in ends]
    with torch.inference_mode(), torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast):
        for i in range(0, len(pixels), batch_size):
            x = model.normalize(pixels[i:i + batch_size].to(device)).to(dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            for j, m in enumerate(modules):
                x = m(x)
                for s, end in enumerate(ends):
                    if end == j:
                        out[s].append((x.float().mean((2, 3)) if x.dim() == 4 else x.float()).cpu())
    return [torch.cat(o).numpy() for o in out]


def _fast_chain(model, chain, probe: torch.Tensor, precision: str, device):
    """(modules, input dtype, channels_last, autocast) to run ``chain`` as fast as is faithful."""
    plain = [m for _, m in chain], torch.float32, False, precision == "bf16"
    if torch.device(device).type != "cpu":
        return plain
    backbone, folded = folded_copy(model.backbone)
    if not folded:
        return plain
    fast = [backbone.get_submodule(name) for name, _ in chain]
    with torch.inference_mode():  # folding must not change the function (fp32, before any bf16 rounding)
        x = y = model.normalize(probe.to(device)).float()
        for (_, m), f in zip(chain, fast):
            x, y = m(x), f(y)
    if not torch.allclose(x, y, rtol=1e-3, atol=1e-4 * max(1.0, float(x.abs().max()))):
        return plain
    dtype, autocast, channels_last = cast_for_cpu(backbone, precision)
    return fast, dtype, channels_last, autocast


def cached_stage_features(model, stages, pixels: torch.Tensor, *, preprocess, precision: str, device,
                          weights_sha256: str | None = None) -> list[np.ndarray]:
    """:func:`stage_features` through the on-disk feature cache (keyed like every cached feature:
    weights, preprocessing, the stage list, precision and the pixels' hash), so ``plan`` followed by
    ``train --strategy auto`` or a second ``plan`` -- and the fixed reference photos, every time --
    pay for the pass once."""
    engine = resolve_engine(None, modality="image", device=torch.device(device), n_images=len(pixels))
    key = feature_key(weights_sha256=weights_sha256 or tensors_sha256(model.backbone.state_dict()),
                      preprocess=preprocess, layer="stages:" + "|".join(st.name for st in stages),
                      precision=precision, data_sha256=pixels_sha256(pixels), engine=engine_label(engine, precision))
    path = cache_dir("features") / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                feats = [z[f"stage{i}"] for i in range(len(stages))]
            if all(len(f) == len(pixels) for f in feats):
                return feats
        except (OSError, ValueError, KeyError):
            pass  # unreadable entry: recompute and overwrite it
    feats = stage_features(model, stages, pixels, precision=precision, device=device)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{f"stage{i}": a for i, a in enumerate(feats)})
    return feats


def domain_distance(user: np.ndarray, reference: np.ndarray, seed: int = 0) -> float:
    """Proxy A-distance 2(1 - 2 err) of a cross-validated logistic-regression domain classifier."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    n = min(len(user), len(reference))
    rng = np.random.default_rng(seed)
    x = np.concatenate([user[rng.permutation(len(user))[:n]], reference[:n]])
    y = np.r_[np.zeros(n), np.ones(n)]
    clf = T.l2_logistic(C=0.1, max_iter=2000)
    acc = cross_val_score(clf, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed)).mean()
    return float(max(0.0, 2.0 * (2.0 * acc - 1.0)))


@dataclass
class StageProfile:
    index: int
    name: str
    channels: int
    logme: float
    linear_acc: float
    domain_distance: float


@dataclass
class Plan:
    strategy: str
    freeze_stages: int
    backbone_lr_ratio: float
    best_feature_stage: int  # the stage whose pooled features score best (stages above add little)
    reasons: list[str] = field(default_factory=list)
    cut_stage: int | None = None  # keep stages 0..cut_stage, drop the rest (None: keep every stage)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def config_changes(self, cfg) -> dict[str, Any]:
        """The TrainConfig fields this plan sets; a ``cut_stage`` the user chose is kept."""
        cut = cfg.cut_stage if cfg.cut_stage is not None else self.cut_stage
        freeze = self.freeze_stages
        if cut is not None:  # at most every kept stage frozen; two-stage fine-tunes at least the top one
            freeze = min(freeze, cut + 1 if self.strategy == "linear-probe" else cut)
        return {"strategy": self.strategy, "freeze_stages": freeze, "backbone_lr_ratio": self.backbone_lr_ratio,
                "cut_stage": cut}


def profile(model, stages, pixels, labels, *, precision: str, device, reference_pixels=None, seed: int = 0,
            preprocess=None) -> list[StageProfile]:
    """Score every stage; with ``preprocess`` given, stage features go through the on-disk cache."""

    def features(px):
        if preprocess is None:
            return stage_features(model, stages, px, precision=precision, device=device)
        return cached_stage_features(model, stages, px, preprocess=preprocess, precision=precision, device=device,
                                     weights_sha256=weights)

    weights = tensors_sha256(model.backbone.state_dict()) if preprocess is not None else None
    feats = features(pixels)
    ref = features(reference_pixels) if reference_pixels is not None else None
    rows = []
    for i, (st, f) in enumerate(zip(stages, feats)):
        f64 = f.astype(np.float64)
        rows.append(StageProfile(
            index=i, name=st.name, channels=f.shape[1], logme=T.logme(f64, labels),
            linear_acc=T.linear_probe_accuracy(f64, labels, seed=seed),
            domain_distance=domain_distance(f64, ref[i].astype(np.float64), seed) if ref is not None else float("nan")))
    return rows


def choose_cut(rows: list[StageProfile], n_images: int | None) -> int | None:
    """The stage after which to cut the network, or None to keep every stage.

    Stage ``k`` below the top qualifies when two measures agree that the stages above it make frozen
    features worse:

    (a) its cross-validated linear-probe accuracy beats the top stage's by more than one standard error
        (a difference inside the noise is no evidence), and is within one standard error of the best
        stage's; among qualifying stages the lowest is chosen (Breiman's one-standard-error rule: the
        smallest network that is statistically as good). The standard error is the binomial
        sqrt(p (1 - p) / n) of an accuracy p measured on n images (0 when n is unknown);
    (b) its LogME is at least the top stage's. LogME is a marginal likelihood, which does not reward
        dimensions that do not help, whereas cross-validated accuracy on a few hundred images favours
        low-dimensional stages (1280 top-stage features against 112 at ``blocks.4`` of Lite0).

    Evidence (Fashion-MNIST, Lite0, linear probe, 2,000 test images): cross-validated accuracy peaked
    below the top in every profile while LogME was highest at the top stage, and every cut made where accuracy
    peaked lowered test accuracy: 100 labels/class, cut after stage 6: 0.8455 -> 0.828, after stage 5:
    0.7735; 5 labels/class, after stage 5: 0.7035 -> 0.6065. See README, "Cutting the network".
    """
    n = len(rows)
    if n < 2:
        return None
    accs = [round(r.linear_acc, 3) for r in rows]
    top, best = accs[-1], max(accs)

    def se(p: float) -> float:
        return math.sqrt(max(p * (1 - p), 1e-12) / n_images) if n_images else 0.0

    need = max(top + se(top), best - se(best))
    for k in range(n - 1):
        if accs[k] > top and accs[k] >= need and rows[k].logme >= rows[-1].logme:
            return k
    return None


def make_plan(rows: list[StageProfile], per_class: float, n_images: int | None = None) -> Plan:
    """The rule, from the profile and the number of labels per class.

    1. Best feature stage: the stage with the highest cross-validated linear-probe accuracy (ties to
       the higher stage). Cut stage (:func:`choose_cut`): when a lower stage beats the top one by more
       than a standard error and LogME agrees, the stages above the lowest such stage that is within one
       standard error of the best are dropped from the network.
    2. Freeze depth: stages whose features still look like natural photos (domain distance < 1.0)
       are general and stay frozen; the first stage where the user's data becomes clearly
       distinguishable (>= 1.0) is where fine-tuning starts. With fewer than 20 labels per class
       nothing is unfrozen (linear probe): there is too little data to move pretrained weights.
       With more than 500 per class one more stage below that point is unfrozen. After a cut,
       at least the top kept stage is fine-tuned.
    3. Learning-rate ratio: 0.1 when the data is close to natural photos at the top stage
       (distance < 1.5), 0.3 when it is far (the pretrained top features need to move further).
    """
    n = len(rows)
    best = max(range(n), key=lambda i: (round(rows[i].linear_acc, 3), i))
    reasons = [f"stage {best} ({rows[best].name}) gives the best frozen features "
               f"(linear-probe accuracy {rows[best].linear_acc:.3f})"]
    if best < n - 1:
        reasons.append(f"stages above {best} add nothing for a frozen head on this data")
    cut = choose_cut(rows, n_images)
    if cut is not None:
        reasons.append(
            f"cut after stage {cut} ({rows[cut].name}): its features ({rows[cut].channels} channels, "
            f"linear-probe accuracy {rows[cut].linear_acc:.3f}) beat the whole network's "
            f"({rows[-1].linear_acc:.3f}) by more than the noise, and LogME agrees ({rows[cut].logme:.3f} vs "
            f"{rows[-1].logme:.3f}); stages {cut + 1}..{n - 1} are dropped")
    kept = n if cut is None else cut + 1
    distances = [r.domain_distance for r in rows]
    if per_class < 20:
        return Plan("linear-probe", kept, 0.1, best, reasons + [
            f"only {per_class:.0f} labels per class: too few to fine-tune pretrained weights; train the head only"],
            cut_stage=cut)
    far = [i for i, d in enumerate(distances) if not np.isnan(d) and d >= 1.0]
    start = far[0] if far else n - 1
    if per_class > 500:
        start = max(0, start - 1)
    start = min(start, kept - 1)
    top_distance = distances[kept - 1]  # the top stage that is kept
    ratio = 0.3 if (not np.isnan(top_distance) and top_distance >= 1.5) else 0.1
    reasons.append(
        f"stages 0..{start - 1} see your images much like natural photos (domain distance < 1.0): keep them frozen"
        if start > 0 else "even the first stage tells your images from natural photos: fine-tune everything")
    reasons.append(f"{per_class:.0f} labels per class: fine-tune from stage {start} after training the head")
    reasons.append(f"top-stage domain distance {top_distance:.2f}: backbone learning rate = {ratio} x head")
    return Plan("two-stage", start, ratio, best, reasons, cut_stage=cut)


def plan_for_data(examples, backbone, *, max_images: int = 600, precision: str = "auto", seed: int = 0):
    """Profile ``backbone`` on (a stratified subsample of) labelled ``examples`` and plan from it."""
    classes = sorted(set(map(str, examples.labels)))
    per_class = len(examples) / len(classes)
    ex = examples
    if len(ex) > max_images:
        keep, _ = stratified_split(ex.labels, 1.0 - max_images / len(ex), seed)
        ex = ex.subset(keep)
    device = default_device()
    model = TransferModel(backbone.module, backbone.num_features, 2, backbone.preprocess,
                          stages=backbone.stages).to(device)
    decoded = decode_all(ex, backbone.preprocess)
    labels = np.asarray([str(ex.labels[i]) for i in decoded.index])
    try:
        ref = decode_all(as_examples(reference_images(seed=seed)), backbone.preprocess).pixels
    except HeadstartError:
        ref = None  # no scikit-image: plan without the similarity part
    prec = resolve_precision(precision, device)
    rows = profile(model, backbone.stages, decoded.pixels, labels, precision=prec, device=device,
                   reference_pixels=ref, seed=seed, preprocess=backbone.preprocess)
    return rows, make_plan(rows, per_class, n_images=len(labels))
