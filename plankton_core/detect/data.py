"""Frames for the detector: decoded from the input store on worker threads, batched per process, flipped.

A global step takes `batch_size × world` frames of a per-epoch permutation seeded by
(seed, epoch); each process decodes its slice. Flips are drawn from (seed, epoch, frame
index), so a resumed run sees exactly the batches the uninterrupted one would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from ..detection import frames_to_tensors
from ..errors import BadInputError
from ..imageio import UnreadableImage, decode_image
from ..store import Store
from .annotations import Frame


def load_frame(images: Store, frame: Frame) -> np.ndarray:
    """The decoded frame; records its width and height on `frame`."""
    try:
        arr = decode_image(images.read_bytes(frame.key))
    except UnreadableImage as exc:
        raise BadInputError(f"frame {images.uri}/{frame.key} is unreadable: {exc}") from None
    except (FileNotFoundError, KeyError):
        raise BadInputError(f"frame {images.uri}/{frame.key} is missing") from None
    frame.height, frame.width = int(arr.shape[0]), int(arr.shape[1])
    return arr


@dataclass
class Batch:
    images: list[torch.Tensor]  # float (3, H, W) in [0, 1]
    targets: list[dict[str, torch.Tensor]]  # boxes (n, 4) xyxy, labels (n,)
    step: int


def flipped(arr: np.ndarray, boxes: np.ndarray, hflip: bool, vflip: bool) -> tuple[np.ndarray, np.ndarray]:
    """The frame and its boxes mirrored left-right and/or top-bottom."""
    h, w = arr.shape[:2]
    b = boxes.copy()
    if hflip:
        arr = arr[:, ::-1]
        b[:, [0, 2]] = w - boxes[:, [2, 0]]
    if vflip:
        arr = arr[::-1]
        b[:, [1, 3]] = h - b[:, [3, 1]]
    return np.ascontiguousarray(arr), b


class TrainBatches:
    """The training batches of one process: `epoch(e, start_step)` yields steps start_step… of epoch e."""

    def __init__(
        self,
        images: Store,
        frames: Sequence[Frame],
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        flip: bool,
        workers: int = 2,
    ):
        self.images, self.frames = images, list(frames)
        self.batch_size, self.rank, self.world, self.seed, self.flip = batch_size, rank, world, seed, flip
        self.workers = workers
        self.global_batch = batch_size * world
        self.steps = len(self.frames) // self.global_batch

    def __len__(self) -> int:
        return self.steps

    def indices(self, epoch: int, step: int) -> np.ndarray:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.frames))
        mine = order[step * self.global_batch : (step + 1) * self.global_batch]
        return mine[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]

    def make(self, epoch: int, step: int) -> Batch:
        images, targets = [], []
        for i in self.indices(epoch, step).tolist():
            f = self.frames[i]
            arr = load_frame(self.images, f)
            crowd = f.crowd if f.crowd is not None else np.zeros(len(f.labels), dtype=bool)
            boxes, labels = f.boxes[~crowd], f.labels[~crowd]
            if self.flip:
                h, v = np.random.default_rng([self.seed, epoch, i]).random(2) < 0.5
                arr, boxes = flipped(arr, boxes, bool(h), bool(v))
            images += frames_to_tensors([arr])
            targets.append(
                {
                    "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "labels": torch.as_tensor(labels, dtype=torch.int64),
                }
            )
        return Batch(images, targets, step)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        if self.workers <= 0:
            for step in range(start_step, self.steps):
                yield self.make(epoch, step)
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="detect-frames") as pool:
            ahead: list[Future[Batch]] = []
            nxt = start_step
            for _ in range(start_step, self.steps):
                while nxt < self.steps and len(ahead) < self.workers + 1:
                    ahead.append(pool.submit(self.make, epoch, nxt))
                    nxt += 1
                yield ahead.pop(0).result()


def decoded(
    images: Store, frames: Sequence[Frame], chunk: int, workers: int = 2
) -> Iterator[tuple[list[Frame], list[np.ndarray]]]:
    """Frames in chunks with their decoded images (decoding of the next chunk overlaps the caller's work)."""
    frames = list(frames)
    chunks = [frames[i : i + chunk] for i in range(0, len(frames), chunk)]
    if not chunks:
        return
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="detect-eval") as pool:
        futures = [pool.submit(lambda c: [load_frame(images, f) for f in c], chunks[0])]
        for i, c in enumerate(chunks):
            if i + 1 < len(chunks):
                futures.append(pool.submit(lambda c: [load_frame(images, f) for f in c], chunks[i + 1]))
            yield c, futures[i].result()
