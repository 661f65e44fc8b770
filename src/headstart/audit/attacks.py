"""Adversarial attacks in the input space [0, 1] (normalisation is inside headstart's models).

Every attack takes ``model(x) -> logits`` on float images ``x`` in [0, 1], NCHW, and returns
perturbed images that stay inside the budget (L∞: ``|δ| <= eps`` per pixel; L2: ``||δ||₂ <= eps`` per
image) and inside [0, 1]. They run on the fp32 model in eval mode, never a folded bf16 copy: gradient
masking by low precision is one of the classic ways an audit overestimates robustness. PGD and APGD
measure accuracy, so, as in AutoAttack, a point is no longer attacked once it fools the model: the
fooling point is returned and its remaining passes are saved.

* :func:`fgsm` — one signed-gradient step (Goodfellow et al. 2015).
* :func:`pgd` — projected gradient descent with random starts (Madry et al. 2018).
* :func:`apgd` — Auto-PGD with the cross-entropy loss (Croce & Hein 2020): a step size halved at
  checkpoints when progress stalls, momentum, restarts from the best point — the attack AutoAttack
  builds on, markedly stronger than PGD at a fixed step.
* :func:`feature_attack` — no labels, no head: push a network's *features* away from the clean ones
  (PGD on ``||f(x') - f(x)||₂``). Run on the public pretrained backbone alone it is the teacher-only
  attack: what an attacker who knows only the base weights can do to every model built on them.
* :func:`random_noise` — the control: random signs at the same L∞ budget.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Model = Callable[[torch.Tensor], torch.Tensor]


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    delta = x_adv - x
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        n = delta.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *[1] * (x.dim() - 1))
        delta = delta * torch.clamp(eps / n, max=1.0)
    return (x + delta).clamp(0.0, 1.0)


def _step(grad: torch.Tensor, size: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return size * grad.sign()
    n = grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, *[1] * (grad.dim() - 1))
    return size * grad / n


def _random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    if norm == "linf":
        noise = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    else:
        noise = torch.randn(x.shape, generator=generator)
        noise = noise / noise.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1)) * eps
        noise = noise * torch.rand(len(x), generator=generator).view(-1, *[1] * (x.dim() - 1))
    return _project(x + noise.to(x.device, x.dtype), x, eps, norm)


def _grad(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-example loss, its gradient with respect to x); the model's own parameters get no gradient."""
    x = x.detach().requires_grad_(True)
    loss = loss_fn(x)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g.detach()


def fgsm(model: Model, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    if eps == 0:
        return x.clone()
    _, g = _grad(lambda z: F.cross_entropy(model(z).float(), y, reduction="none"), x)
    return (x + eps * g.sign()).clamp(0.0, 1.0).detach()


def _ce_grad(model: Model, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-example cross-entropy, its input gradient, whether ``x`` is already misclassified)."""
    x = x.detach().requires_grad_(True)
    logits = model(x).float()
    loss = F.cross_entropy(logits, y, reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g.detach(), (logits.argmax(1) != y).detach()


def pgd(model: Model, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf", steps: int = 10,
        alpha: float | None = None, restarts: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """PGD with ``restarts`` random starts. A point that fools the model is kept and no longer attacked
    (later steps could only lose it, and dropping it saves its passes — AutoAttack does the same); a point
    never fooled returns the last restart's end point. ``alpha`` defaults to 2.5 eps / steps (Madry et al.)."""
    if eps == 0:
        return x.clone()
    generator = generator or torch.Generator().manual_seed(0)
    alpha = alpha if alpha is not None else 2.5 * eps / steps
    best = x.clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for _ in range(restarts):
        adv = _random_start(x, eps, norm, generator)  # drawn for every point: the same starts whoever is left
        live = (~fooled).nonzero().squeeze(1)
        for k in range(steps + 1):
            if not len(live):
                break
            if k == steps:  # the end point: only check it
                with torch.no_grad():
                    wrong = model(adv[live]).argmax(1) != y[live]
            else:
                _, g, wrong = _ce_grad(model, adv[live], y[live])
            hit = live[wrong]
            best[hit], fooled[hit] = adv[hit], True
            live = live[~wrong]
            if k < steps:
                g = g[~wrong]
                adv[live] = _project(adv[live] + _step(g, alpha, norm), x[live], eps, norm)
        best[live] = adv[live]
    return best.detach()


def _apgd_checkpoints(steps: int) -> list[int]:
    """Iterations where APGD checks its progress: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({int(round(q * steps)) for q in p if q <= 1})


def apgd(model: Model, x: torch.Tensor, y: torch.Tensor, eps: float, *, norm: str = "linf", steps: int = 50,
         restarts: int = 1, rho: float = 0.75, generator: torch.Generator | None = None) -> torch.Tensor:
    """Auto-PGD on the cross-entropy (APGD-CE). Every point visited is checked: the first that fools the
    model is returned and that example is attacked no further; the others return their highest-loss point
    over steps and restarts."""
    if eps == 0:
        return x.clone()
    generator = generator or torch.Generator().manual_seed(0)
    checks = _apgd_checkpoints(steps)
    shape = (-1, *[1] * (x.dim() - 1))
    found = x.clone()
    fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)

    def loss_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and gradient at ``z`` for the points still standing (-inf and 0 for the others)."""
        loss = torch.full((len(x),), -float("inf"), device=x.device)
        g = torch.zeros_like(x)
        live = (~fooled).nonzero().squeeze(1)
        if len(live):
            loss[live], g[live], wrong = _ce_grad(model, z[live], y[live])
            hit = live[wrong]
            found[hit], fooled[hit] = z[hit], True
        return loss, g

    best_x, best_loss = x.clone(), torch.full((len(x),), -float("inf"), device=x.device)
    for _ in range(restarts):
        eta = torch.full((len(x),), 2.0 * eps, device=x.device)
        cur = _random_start(x, eps, norm, generator)
        loss, g = loss_grad(cur)
        run_best_x, run_best_loss = cur.clone(), loss.clone()
        prev = cur.clone()
        improved = torch.zeros(len(x), device=x.device)  # steps since the last checkpoint that raised the loss
        last_check, loss_at_check, eta_at_check = 0, run_best_loss.clone(), eta.clone()
        for k in range(steps):
            if fooled.all():
                break
            z = _project(cur + _step(g, 1.0, norm) * eta.view(shape), x, eps, norm)
            momentum = 0.75 if k > 0 else 1.0
            nxt = _project(cur + momentum * (z - cur) + (1 - momentum) * (cur - prev), x, eps, norm)
            prev, cur = cur, nxt
            loss, g_new = loss_grad(cur)
            better = loss > run_best_loss
            improved += better.float()
            run_best_x[better], run_best_loss[better] = cur[better], loss[better]
            g = g_new
            if k + 1 in checks and k + 1 > last_check:
                window = k + 1 - last_check
                stalled = (improved < rho * window) | ((eta == eta_at_check) & (run_best_loss == loss_at_check))
                stalled &= ~fooled
                eta_at_check = eta.clone()
                eta = torch.where(stalled, eta / 2, eta)
                # restart the stalled examples from their best point so far
                cur = torch.where(stalled.view(shape), run_best_x, cur)
                if stalled.any():
                    _, g_best = loss_grad(cur)
                    g = torch.where(stalled.view(shape), g_best, g)
                improved.zero_()
                last_check, loss_at_check = k + 1, run_best_loss.clone()
        take = run_best_loss > best_loss
        best_x[take], best_loss[take] = run_best_x[take], run_best_loss[take]
    return torch.where(fooled.view(shape), found, best_x).detach()


def feature_attack(features: Model, x: torch.Tensor, eps: float, *, steps: int = 10, alpha: float | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """L∞ PGD that pushes ``features(x')`` away from ``features(x)``: needs neither labels nor the head."""
    if eps == 0:
        return x.clone()
    generator = generator or torch.Generator().manual_seed(0)
    alpha = alpha if alpha is not None else 2.5 * eps / steps
    with torch.no_grad():
        clean = features(x).float()
        scale = clean.norm(dim=1).clamp(min=1e-6)
    adv = _random_start(x, eps, "linf", generator)
    for _ in range(steps):
        _, g = _grad(lambda z: (features(z).float() - clean).norm(dim=1) / scale, adv)
        adv = _project(adv + _step(g, alpha, "linf"), x, eps, "linf")
    return adv.detach()


def random_noise(x: torch.Tensor, eps: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random ±eps on every pixel (the L∞ budget spent at random): the control for a transfer attack."""
    generator = generator or torch.Generator().manual_seed(0)
    signs = torch.randint(0, 2, x.shape, generator=generator).to(x.device, x.dtype) * 2 - 1
    return (x + eps * signs).clamp(0.0, 1.0)
