"""The embedded data set: ten classes of drawn shapes, generated from a seed, so a quick start needs no download.

Each image is a light shape, filled or outlined, of random tint, size and position on a dark background of random
tint, with a little pixel noise; the class is the shape. Image i of a split is the same on every machine: its random
numbers come from (seed, split, i) alone.

The drawing is made for the tutorial's recipe (Tudui, which has no ReLU, and plain SGD at lr 0.01) to learn in a
minute on a CPU. A shape of either polarity, lighter or darker than its background, asks for a nonlinearity Tudui
lacks: drawn that way, smaller and with thinner strokes, it stayed near chance (19% test after 10 epochs). Light on
dark, large and with broad strokes, it reaches 99% (seeds 0, 1, 2: 99.6%, 99.3%, 99.0%).
"""
import math

import numpy as np
import torch
from PIL import Image, ImageDraw

CLASSES = ["circle", "ring", "square", "frame", "triangle", "diamond", "plus", "cross", "star", "hexagon"]


def _polygon(cx, cy, r, corners, turn=0.0, inner=None):
    """Vertices of a regular polygon (or a star, with `inner` radius) centred on (cx, cy)."""
    points = []
    steps = corners * (2 if inner else 1)
    for k in range(steps):
        radius = inner if inner and k % 2 else r
        angle = turn + 2 * math.pi * k / steps
        points.append((cx + radius * math.sin(angle), cy - radius * math.cos(angle)))
    return points


def draw_shape(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size, 3) uint8 image of class `label`."""
    background = rng.integers(0, 41, 3)  # dark: the shape is always the lighter one, so edges have one sign
    colour = np.minimum(background + rng.integers(180, 256, 3), 255)  # light: every channel 180+ above the background
    image = Image.new("RGB", (size, size), tuple(int(c) for c in background))
    draw = ImageDraw.Draw(image)
    r = rng.uniform(0.3, 0.46) * size  # radius of the shape's bounding circle: large, so the shape fills the image
    r = min(r, size / 2 - 1)  # inside the image, a pixel to spare, below 25 pixels (data.image_size may be 8)
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    fill = tuple(int(c) for c in colour)
    width = max(2, round(r / 2.5))  # broad strokes (ring, frame, plus, cross): more lit pixels
    box = (cx - r, cy - r, cx + r, cy + r)
    name = CLASSES[label]
    if name == "circle":
        draw.ellipse(box, fill=fill)
    elif name == "ring":
        draw.ellipse(box, outline=fill, width=width)
    elif name == "square":
        draw.rectangle(_square(cx, cy, r), fill=fill)
    elif name == "frame":
        draw.rectangle(_square(cx, cy, r), outline=fill, width=width)
    elif name == "triangle":
        draw.polygon(_polygon(cx, cy, r, 3), fill=fill)
    elif name == "diamond":
        draw.polygon(_polygon(cx, cy, r, 4), fill=fill)
    elif name == "plus":
        draw.rectangle((cx - r, cy - width / 2, cx + r, cy + width / 2), fill=fill)
        draw.rectangle((cx - width / 2, cy - r, cx + width / 2, cy + r), fill=fill)
    elif name == "cross":
        d = r * 0.75
        draw.line((cx - d, cy - d, cx + d, cy + d), fill=fill, width=width)
        draw.line((cx - d, cy + d, cx + d, cy - d), fill=fill, width=width)
    elif name == "star":
        draw.polygon(_polygon(cx, cy, r, 5, inner=r * 0.42), fill=fill)
    else:  # hexagon
        draw.polygon(_polygon(cx, cy, r, 6, turn=math.pi / 6), fill=fill)
    noise = rng.integers(-8, 9, (size, size, 3), dtype=np.int16)  # a little: no region is flat, as in a photo
    pixels = np.asarray(image, dtype=np.int16) + noise
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _square(cx, cy, r):
    h = r * 0.8  # a square inside the same circle would look small next to the other shapes
    return (cx - h, cy - h, cx + h, cy + h)


class ShapesDataset(torch.utils.data.Dataset):
    """`count` drawn shapes, balanced over the classes; items are (PIL image, label) like torchvision's sets."""

    classes = CLASSES

    def __init__(self, count: int, image_size: int, seed: int, split: str, transform=None):
        split_id = {"train": 0, "test": 1}[split]
        self.targets = [i % len(CLASSES) for i in range(count)]
        # (N, H, W, 3) uint8: drawing once up front (about 0.1 s a thousand images) makes every epoch cheap
        self.images = np.stack(
            [draw_shape(t, image_size, np.random.default_rng([seed, split_id, i])) for i, t in enumerate(self.targets)]
        )
        self.transform = transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]
