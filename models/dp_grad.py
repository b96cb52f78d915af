"""Per-example clipped gradient sums of the trainable weights (the core of DP-SGD).

:func:`clipped_grad_sum` returns sum_i clip(g_i, C) over a batch, where g_i is the gradient of
example i's own loss (classification: its cross-entropy; causal LM: the mean token loss of its
response) with respect to the trainable weights, flattened in ``adapted.spec`` order.

Fast path: when every trainable tensor is the weight or bias of an ``nn.Linear`` (LoRA A/B, the
classifier head, full fine-tuning of Linear layers), one batched forward/backward gives all
per-example gradients: a forward hook keeps each Linear's input ``a`` and a hook on its output
receives the output gradient ``g``; the per-example weight gradient is
``einsum("bto,bti->boi", g, a)`` (summed over every call of the module), the bias gradient
``g.sum(t)``. Any other trainable (prompt or prefix embeddings, LayerNorm weights) falls back
to one backward pass per example: exact, but slow.

The model runs in ``eval()`` mode, i.e. without dropout. DP-SGD's analysis bounds the
sensitivity of the sum through clipping of a *deterministic* function of each example; a
dropout mask shared across the batch would also couple examples, and (for torch.func) vmap
would need a randomness policy. Gradients are taken in float32 without autocast so the clipped
norms are exact.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from secagg.models.adapted import AdaptedModel
from secagg.models.batching import IGNORE_INDEX, make_batch
from secagg.models.data import Dataset
from secagg.models.device import resolve_device
from secagg.models.loading import TaskKind
from secagg.models.train import _check_data, _gc_paused

__all__ = ["ClippedSum", "clipped_grad_sum", "per_example_loss", "poisson_indices", "trainables"]


@dataclass(frozen=True)
class ClippedSum:
    """Sum of per-example gradients, each clipped to L2 norm <= clip, plus batch statistics."""

    vector: NDArray[np.float64]  # spec order, same length as adapted.get_vector()
    count: int  # examples in the batch
    loss: float  # mean per-example loss of the batch (before any update)
    mean_norm: float  # mean per-example gradient norm before clipping
    frac_clipped: float  # fraction of examples whose norm exceeded clip


def trainables(adapted: AdaptedModel) -> list[tuple[str, torch.nn.Parameter]]:
    """The model's trainable parameters as (module-path name, parameter), in spec order.

    Spec names are the codec's canonical names (PEFT drops the adapter name), so tensors are
    matched by storage: the codec's state dict shares memory with the parameters.

    Raises:
        ValueError: a spec tensor has no trainable parameter behind it, or vice versa.
    """
    by_ptr = {p.data_ptr(): (n, p) for n, p in adapted.model.named_parameters() if p.requires_grad}
    state = adapted.state_dict()
    out: list[tuple[str, torch.nn.Parameter]] = []
    for name in adapted.spec.names:
        hit = by_ptr.get(state[name].data_ptr())
        if hit is None:
            raise ValueError(f"spec tensor {name!r} is not a trainable parameter of the model")
        out.append(hit)
    if len(out) != len(by_ptr):
        raise ValueError("the model has trainable parameters outside the spec")
    return out


def poisson_indices(
    n: int, rate: float, uniform: Callable[[int], NDArray[np.float64]]
) -> NDArray[np.int64]:
    """Poisson sampling: the indices i < n with ``uniform(n)[i] < rate``.

    ``uniform`` must come from a CSPRNG owned by the caller (DP needs unpredictable sampling).

    Raises:
        ValueError: ``n`` < 0, ``rate`` outside [0, 1], or ``uniform`` returned a wrong shape.
    """
    if n < 0 or not 0.0 <= rate <= 1.0:
        raise ValueError(f"need n >= 0 and 0 <= rate <= 1, got n={n}, rate={rate}")
    u = np.asarray(uniform(n), dtype=np.float64)
    if u.shape != (n,):
        raise ValueError(f"uniform({n}) returned shape {u.shape}")
    return np.flatnonzero(u < rate).astype(np.int64)


def per_example_loss(
    adapted: AdaptedModel, batch: dict[str, torch.Tensor], dev: torch.device
) -> torch.Tensor:
    """Loss of each example in ``batch`` (shape (B,)), from one forward pass of the model.

    Classification: cross-entropy. Causal LM: mean cross-entropy over the example's target
    tokens (virtual prompt tokens, when prepended, are cut off the logits first).
    """
    labels = batch["labels"].to(dev)
    logits = adapted.model(
        input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev)
    ).logits.float()
    if adapted.task is TaskKind.CLASSIFICATION:
        return F.cross_entropy(logits, labels, reduction="none")
    logits = logits[:, -labels.shape[1] :, :][:, :-1]
    target = labels[:, 1:]
    tok = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(target.shape)
    counts = (target != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return tok.sum(dim=1) / counts


class _LinearHooks:
    """Per-example gradients of Linear weights/biases written into a (B, d) buffer."""

    def __init__(self, params: list[tuple[str, torch.nn.Parameter]], model: torch.nn.Module):
        offsets: dict[int, int] = {}
        pos = 0
        for _, p in params:
            offsets[id(p)] = pos
            pos += p.numel()
        self.size = pos
        self.buffer: torch.Tensor | None = None
        self.handles: list[Any] = []
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                w = offsets.get(id(module.weight))
                b = offsets.get(id(module.bias)) if module.bias is not None else None
                if w is not None or b is not None:
                    self.handles.append(module.register_forward_hook(self._forward(w, b)))

    def _forward(self, w_off: int | None, b_off: int | None) -> Callable[..., None]:
        def hook(module: torch.nn.Linear, inputs: tuple[torch.Tensor, ...], out: Any) -> None:
            if not out.requires_grad:
                return
            a = inputs[0].detach()

            def on_grad(g: torch.Tensor) -> None:
                buf = self.buffer
                assert buf is not None
                bsz = g.shape[0]
                g3 = g.reshape(bsz, -1, g.shape[-1]).float()
                if w_off is not None:
                    a3 = a.reshape(bsz, -1, a.shape[-1]).float()
                    gw = torch.einsum("bto,bti->boi", g3, a3).reshape(bsz, -1)
                    buf[:, w_off : w_off + gw.shape[1]] += gw
                if b_off is not None:
                    buf[:, b_off : b_off + g3.shape[-1]] += g3.sum(dim=1)

            out.register_hook(on_grad)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _covered_by_linear(
    model: torch.nn.Module, params: list[tuple[str, torch.nn.Parameter]]
) -> bool:
    linear_ids = set()
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            linear_ids.add(id(module.weight))
            if module.bias is not None:
                linear_ids.add(id(module.bias))
    return all(id(p) in linear_ids for _, p in params)


def _chunks(indices: NDArray[np.int64], chunk: int) -> Iterator[NDArray[np.int64]]:
    for start in range(0, len(indices), chunk):
        yield indices[start : start + chunk]


def _grads_hooked(
    adapted: AdaptedModel, batch: dict[str, torch.Tensor], dev: torch.device, hooks: _LinearHooks
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-example losses, per-example gradients (B, d)) by one batched backward pass."""
    bsz = batch["labels"].shape[0]
    hooks.buffer = torch.zeros(bsz, hooks.size, dtype=torch.float32, device=dev)
    losses = per_example_loss(adapted, batch, dev)
    torch.autograd.backward(losses.sum())
    grads, hooks.buffer = hooks.buffer, None
    return losses.detach(), grads


def _grads_looped(
    adapted: AdaptedModel,
    batch: dict[str, torch.Tensor],
    dev: torch.device,
    params: list[torch.nn.Parameter],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The same, one example at a time (for trainables that are not Linear weights)."""
    losses, rows = [], []
    for i in range(batch["labels"].shape[0]):
        one = {k: v[i : i + 1] for k, v in batch.items()}
        loss = per_example_loss(adapted, one, dev)[0]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1).float()
                    for g, p in zip(grads, params, strict=True)
                ]
            )
        )
        losses.append(loss.detach())
    return torch.stack(losses), torch.stack(rows)


def clipped_grad_sum(
    adapted: AdaptedModel,
    data: Dataset,
    indices: NDArray[np.int64],
    *,
    clip: float,
    max_length: int = 64,
    chunk: int = 32,
    device: str | torch.device | None = None,
) -> ClippedSum:
    """Sum over ``data[indices]`` of per-example gradients, each clipped to L2 norm ``clip``.

    Examples are processed ``chunk`` at a time; the model is left in eval mode, weights
    unchanged and ``.grad`` cleared. Empty ``indices`` give a zero vector and count 0.

    Raises:
        ValueError: ``clip`` <= 0 or ``chunk`` < 1; CUDA requested but absent.
        IndexError: an index outside ``data``.
        DataFormatError: ``data`` is empty, for another task, or has more labels than the head.
    """
    if not clip > 0 or chunk < 1:
        raise ValueError(f"need clip > 0 and chunk >= 1, got clip={clip}, chunk={chunk}")
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    _check_data(adapted, data)
    if idx.size and (idx.min() < 0 or idx.max() >= len(data)):
        raise IndexError("indices outside the data set")
    dev = resolve_device(device)
    model = adapted.model.to(dev)
    model.eval()
    params = trainables(adapted)
    total = torch.zeros(adapted.spec.size, dtype=torch.float64, device=dev)
    loss_sum, norm_sum, clipped = 0.0, 0.0, 0
    hooks = _LinearHooks(params, model) if _covered_by_linear(model, params) else None
    try:
        with _gc_paused():
            for part in _chunks(idx, chunk):
                batch = make_batch(adapted.tokenizer, data, part, max_length=max_length)
                if hooks is not None:
                    losses, grads = _grads_hooked(adapted, batch, dev, hooks)
                else:
                    losses, grads = _grads_looped(adapted, batch, dev, [p for _, p in params])
                g64 = grads.double()
                norms = torch.linalg.vector_norm(g64, dim=1)
                scale = torch.clamp(clip / torch.clamp(norms, min=1e-30), max=1.0)
                total += scale @ g64
                loss_sum += float(losses.double().sum())
                norm_sum += float(norms.sum())
                clipped += int((norms > clip).sum())
    finally:
        if hooks is not None:
            hooks.remove()
        model.zero_grad(set_to_none=True)
    n = int(idx.size)
    return ClippedSum(
        vector=total.cpu().numpy(),
        count=n,
        loss=loss_sum / n if n else 0.0,
        mean_norm=norm_sum / n if n else 0.0,
        frac_clipped=clipped / n if n else 0.0,
    )
