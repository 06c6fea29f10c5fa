"""Batches of grey images for the training device, resident or streamed.

- resident: the whole prepared image array lives on the device as stored (uint8 or uint16),
  so a batch is one gather on the device: the hospital target set (1,924 images at 512 px,
  0.5 GB) fits on any training GPU and the CPU never touches a batch.
- streamed: sources too big for that (NIH, CheXpert) are read from the memory-mapped array
  by a background thread, a few batches ahead; on CUDA into pinned buffers copied
  asynchronously on a side stream, so the copy overlaps the previous step.

Both give float (B, 1, H, W) in [0, 1] on the device and the time the step waited for data.
"""
from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

import numpy as np
import torch

FEEDS = ("auto", "resident", "stream")
PREFETCH = 3  # batches read ahead by the streaming thread
CPU_RESIDENT_BYTES = 8 << 30


def to_unit(batch: torch.Tensor) -> torch.Tensor:
    """Stored uint8 or uint16 images (B, H, W) as float (B, 1, H, W) in [0, 1]: what every model takes."""
    top = 255.0 if batch.dtype == torch.uint8 else 65535.0
    return batch.unsqueeze(1).float().div_(top)


def _fits_resident(nbytes: int, device: torch.device) -> bool:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return nbytes <= free // 4  # leave the rest to the model, activations and the allocator
    return nbytes <= CPU_RESIDENT_BYTES


class ImageFeed:
    """`batches(order, batch_size)` yields (images, indices) in `order`'s order; `waited` sums the waits.

    Several arrays (co-trained sources) are indexed as one: their rows one after another.
    """

    def __init__(self, images: np.ndarray | list[np.ndarray], device: torch.device, mode: str = "auto"):
        if mode not in FEEDS:
            raise ValueError(f"unknown feed {mode!r}; expected one of {FEEDS}")
        self.arrays = list(images) if isinstance(images, (list, tuple)) else [images]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.shape = (int(self.offsets[-1]), *self.arrays[0].shape[1:])
        self.dtype = self.arrays[0].dtype
        self.device = device
        nbytes = sum(a.nbytes for a in self.arrays)
        self.resident = mode == "resident" or (mode == "auto" and _fits_resident(nbytes, device))
        self.stored = None
        if self.resident:  # np.require: a read-only memmap becomes an in-memory copy torch may own
            self.stored = torch.cat([torch.from_numpy(np.require(a, requirements=["C", "W"])).to(device)
                                     for a in self.arrays])
        self.waited = 0.0

    def __len__(self) -> int:
        return self.shape[0]

    def _gather(self, idx: np.ndarray, out: np.ndarray) -> np.ndarray:
        if len(self.arrays) == 1:
            return np.take(self.arrays[0], idx, axis=0, out=out)
        source = np.searchsorted(self.offsets, idx, side="right") - 1
        for s in np.unique(source):
            rows = source == s
            out[rows] = self.arrays[s][idx[rows] - self.offsets[s]]
        return out

    def batches(self, order: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
        chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        if self.resident:
            yield from self._resident(chunks)
        else:
            yield from self._streamed(chunks)

    def _resident(self, chunks: list[np.ndarray]):
        for idx in chunks:
            started = time.perf_counter()
            batch = to_unit(self.stored[torch.as_tensor(idx, device=self.device)])
            self.waited += time.perf_counter() - started
            yield batch, idx

    def _streamed(self, chunks: list[np.ndarray]):
        ready: queue.Queue = queue.Queue(maxsize=PREFETCH)
        stop = threading.Event()
        reader = threading.Thread(target=self._read, args=(chunks, ready, stop), daemon=True)
        reader.start()
        try:
            for idx in chunks:
                started = time.perf_counter()
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                batch, event = item
                if event is not None:
                    torch.cuda.current_stream(self.device).wait_event(event)
                    batch.record_stream(torch.cuda.current_stream(self.device))
                self.waited += time.perf_counter() - started
                yield to_unit(batch), idx
        finally:
            stop.set()
            while reader.is_alive():  # unblock a reader waiting on a full queue
                try:
                    ready.get_nowait()
                except queue.Empty:
                    reader.join(0.01)

    def _read(self, chunks: list[np.ndarray], ready: queue.Queue, stop: threading.Event) -> None:
        cuda = self.device.type == "cuda"
        stream = torch.cuda.Stream(self.device) if cuda else None
        size = max((len(c) for c in chunks), default=0)
        shape = (size, *self.shape[1:])
        # PREFETCH + 2 buffers: one in the queue per slot, one being filled, one in use by the step
        pinned = [torch.empty(shape, dtype=torch.from_numpy(np.empty(0, self.dtype)).dtype).pin_memory()
                  for _ in range(PREFETCH + 2)] if cuda else []
        copied: list = [None] * len(pinned)
        try:
            for n, idx in enumerate(chunks):
                if stop.is_set():
                    return
                if not cuda:
                    ready.put((torch.from_numpy(self._gather(idx, np.empty((len(idx), *self.shape[1:]), self.dtype))),
                               None))
                    continue
                slot = n % len(pinned)
                if copied[slot] is not None:
                    copied[slot].synchronize()  # the buffer's last copy to the device is done
                host = pinned[slot][:len(idx)]
                self._gather(idx, host.numpy())
                with torch.cuda.stream(stream):
                    batch = host.to(self.device, non_blocking=True)
                    copied[slot] = torch.cuda.Event()
                    copied[slot].record(stream)
                ready.put((batch, copied[slot]))
        except BaseException as exc:  # noqa: BLE001 - surfaced in the training thread, not lost in this one
            ready.put(exc)
