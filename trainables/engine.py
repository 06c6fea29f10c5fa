"""train_one_epoch and predict as plain functions over an in-memory uint8 image tensor."""
from __future__ import annotations

import math

import numpy as np
import torch


def _batch(images: torch.Tensor, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """Grey images in [0, 1] from the 8- or 16-bit prepared pixels."""
    top = 255.0 if images.dtype == torch.uint8 else 65535.0
    return images[torch.as_tensor(idx)].to(device, non_blocking=True).unsqueeze(1).float().div_(top)


def targets_and_mask(labels: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """0/1 targets, and a 0/1 mask where labels are NaN (masked, e.g. CheXpert U-Ignore); None if none are."""
    y = torch.as_tensor(labels, device=device)
    known = ~torch.isnan(y)
    if bool(known.all()):
        return y, None
    return torch.nan_to_num(y, nan=0.0), known.float()


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: the learning rate is too high or the data is broken."""


def train_one_epoch(model, loss_fn, optimizer, images, labels, indices, batch_size, device, generator) -> float:
    model.train()
    order = indices[torch.randperm(len(indices), generator=generator).numpy()]
    total, seen = 0.0, 0
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        if len(idx) < 2 and start > 0:  # a batch of one breaks batch norm; its image is seen next epoch
            continue
        x = _batch(images, idx, device)
        y, mask = targets_and_mask(labels[idx], device)
        loss = loss_fn(model(x), y, mask)
        if not math.isfinite(loss.item()):
            raise NonFiniteLoss(f"training loss is {loss.item()} at batch {start // batch_size}; lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, seen = total + loss.item() * len(idx), seen + len(idx)
    return total / max(seen, 1)


@torch.no_grad()
def predict(model, images, indices, batch_size, device) -> np.ndarray:
    """Sigmoid probabilities, one row per index."""
    model.eval()
    out = [torch.sigmoid(model(_batch(images, indices[s:s + batch_size], device))).cpu()
           for s in range(0, len(indices), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
