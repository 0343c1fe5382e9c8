"""Web-like captions for classification images: how mini-CLIP v2 is taught without its labels.

Why: a web-trained CLIP reads alt-texts that name an image's class only now and then, in wording
no evaluation template uses, and that talk about much else (colours, light, the background,
where things sit). A model pretrained on "a photo of a {class}." for every image (mini-CLIP v1)
has a zero-shot head that is already a supervised head, and few-shot methods cannot gain on it.
Here each caption is built, per image and epoch, from

- a subject: the class name with probability ``name_rate``, else a broader word (the WordNet
  lexicographer file of the name: animal, plant, object, ...) or no subject at all (the scene);
- phrases about the pixels that are not the class: brightness, black and white, the colour of
  the centre and of the border, where the salient part sits, how much of the frame it fills;
- one of the wordings of ``TEMPLATES``, none of which is, or contains, an evaluation template
  (no caption says "photo", which every one of CLIP's 80 templates does but six).

The pixel attributes are computed from the very view the model sees (after cropping and
flipping), so they are always true of it; ``pixel_attributes`` is also what the probe for
class-irrelevant features predicts.
"""

from __future__ import annotations

import colorsys
import random
import re
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch

COLOURS = ("black", "white", "gray", "red", "orange", "yellow", "green", "blue", "purple", "pink")
BRIGHTNESS = ("dark", "medium", "bright")
POSITIONS = ("in the middle", "on the left", "on the right", "at the top", "at the bottom")
SIZES = ("small", "medium", "large")

# The attributes a probe predicts, with their classes (index = label).
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "brightness": BRIGHTNESS,
    "centre_colour": COLOURS,
    "background_colour": COLOURS,
    "position": POSITIONS,
    "size": SIZES,
    "grayscale": ("colour", "black and white"),
}

# WordNet lexicographer files -> broader words a caption may use instead of the class name.
BROAD_WORDS: dict[str, tuple[str, ...]] = {
    "noun.animal": ("animal", "creature"),
    "noun.plant": ("plant", "flower", "bloom"),
    "noun.artifact": ("object", "thing", "item"),
    "noun.food": ("food", "dish"),
    "noun.person": ("person", "figure"),
    "noun.body": ("face", "figure"),
    "noun.object": ("thing", "object"),
    "noun.substance": ("thing", "stuff"),
}
FALLBACK_WORDS = ("thing", "object")

# Wordings: {subject} is "a red lotus" / "an animal"; {attrs} are pixel phrases. None of them
# says "photo" (CLIP's evaluation wording).
TEMPLATES = (
    "{subject}",
    "{subject} {position}",
    "{subject} {background}",
    "{subject} {position}, {background}",
    "{light} shot of {subject}",
    "{light} picture: {subject} {position}",
    "look at this, {subject} {background}",
    "{subject} i saw today",
    "snapshot of {subject} {position}",
    "{subject}, {light} light",
    "{sized} {background}",
    "my {subject_bare}, {light}, {background}",
    "{mono} image of {subject}",
)
SCENE_TEMPLATES = (
    "a {light} scene with something {colour} {position}",
    "{colour} on {background_colour}",
    "a {light} picture, {background}",
    "something {colour} {position}, {background}",
    "{mono} picture, {background_colour} background",
    "{light} image with a {colour} spot {position}",
)
LIGHT_WORDS = {"dark": ("dark", "dim", "low-light"), "bright": ("bright", "sunny", "well-lit")}
LIGHT_WORDS["medium"] = ("plain", "soft", "daylight")
SIZE_WORDS = {"small": ("tiny", "distant"), "large": ("big", "close"), "medium": ("",)}


GRID = 16
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
BORDER = np.ones((GRID, GRID), dtype=bool)
BORDER[2:-2, 2:-2] = False
YS, XS = (c.ravel() for c in np.meshgrid(*[np.linspace(0, 1, GRID)] * 2, indexing="ij"))


@dataclass(frozen=True)
class Attributes:
    brightness: str
    centre_colour: str
    background_colour: str
    position: str
    size: str
    grayscale: str

    def labels(self) -> dict[str, int]:
        return {name: ATTRIBUTES[name].index(getattr(self, name)) for name in ATTRIBUTES}


def colour_name(rgb: tuple[float, float, float]) -> str:
    """A basic colour word for a mean RGB in [0, 1] (HSV bins)."""
    hue, saturation, value = colorsys.rgb_to_hsv(*rgb)
    if value < 0.2:
        return "black"
    if saturation < 0.18:
        return "white" if value > 0.75 else "gray"
    degrees = hue * 360
    if degrees < 15 or degrees >= 340:
        return "red"
    if degrees < 40:
        return "orange"
    if degrees < 70:
        return "yellow"
    if degrees < 165:
        return "green"
    if degrees < 255:
        return "blue"
    if degrees < 290:
        return "purple"
    return "pink"


def pixel_attributes(image: torch.Tensor) -> Attributes:
    """Attributes of one image (3, H, W) in [0, 1] (or uint8) that are not its class.

    Computed in numpy on a 16 x 16 average-pooled copy: the attributes are coarse, and a caption
    is built for every item of every epoch, in the data loader beside the model.
    """
    pixels = image.numpy().astype(np.float32)
    if image.dtype == torch.uint8:
        pixels /= 255
    c, h, w = pixels.shape
    small = pixels[:, : h - h % GRID, : w - w % GRID]
    small = small.reshape(c, GRID, small.shape[1] // GRID, GRID, -1).mean(axis=(2, 4))
    luminance = float(LUMA @ small.reshape(3, -1).mean(axis=1))
    brightness = "dark" if luminance < 0.3 else "bright" if luminance > 0.6 else "medium"
    grayscale = float(pixels.std(axis=0).mean()) < 0.02
    background = np.median(small[:, BORDER], axis=1)  # robust to an object touching the edge
    centre = small[:, 4:12, 4:12].mean(axis=(1, 2))
    distance = np.linalg.norm(small - background[:, None, None], axis=0).ravel()
    # the salient part: at most the quarter of cells farthest from the background colour (ties
    # at the cut, as on a flat backdrop, and cells close to the background never count)
    cut = max(float(np.partition(distance, distance.size * 3 // 4)[distance.size * 3 // 4]), 0.02)
    salient = distance > cut
    if salient.any():
        dx, dy = float(XS[salient].mean()) - 0.5, float(YS[salient].mean()) - 0.5
    else:
        dx = dy = 0.0
    if max(abs(dx), abs(dy)) < 0.1:
        position = "in the middle"
    elif abs(dx) >= abs(dy):
        position = "on the left" if dx < 0 else "on the right"
    else:
        position = "at the top" if dy < 0 else "at the bottom"
    share = float((distance > 0.25).mean())
    size = "small" if share < 0.2 else "large" if share > 0.6 else "medium"
    return Attributes(
        brightness,
        colour_name(tuple(centre.tolist())),
        colour_name(tuple(background.tolist())),
        position,
        size,
        "black and white" if grayscale else "colour",
    )


@cache
def _wordnet():
    from clip_backdoor.data.eda import _wordnet as wordnet

    return wordnet()


@cache
def broad_words(name: str) -> tuple[str, ...]:
    """Broader words for a class name: the WordNet lexicographer file of one of its noun senses
    (the whole name, else its last word, else its first), living things before artefacts."""
    words = name.lower().split()
    for query in dict.fromkeys(("_".join(words), words[-1], words[0])):
        files = {synset.lexname() for synset in _wordnet().synsets(query, pos="n")}
        for lexname, found in BROAD_WORDS.items():
            if lexname in files:
                return found
    return FALLBACK_WORDS


def article(phrase: str) -> str:
    return ("an " if re.match(r"[aeiou]", phrase) else "a ") + phrase


class WebCaptioner:
    """Captions for one class's images; ``caption(image, rng)`` is deterministic for a seed."""

    def __init__(self, classname: str, name_rate: float, subject_rate: float = 0.7) -> None:
        self.classname, self.name_rate, self.subject_rate = classname, name_rate, subject_rate
        self.broad = broad_words(classname)

    def caption(self, image: torch.Tensor, rng: random.Random) -> str:
        return self.compose(pixel_attributes(image), rng)

    def compose(self, attrs: Attributes, rng: random.Random) -> str:
        roll = rng.random()
        if roll >= self.name_rate and rng.random() >= self.subject_rate:
            return self._fill(rng.choice(SCENE_TEMPLATES), attrs, None, rng)
        bare = self.classname if roll < self.name_rate else rng.choice(self.broad)
        return self._fill(rng.choice(TEMPLATES), attrs, bare, rng)

    def _fill(self, template: str, attrs: Attributes, bare: str | None, rng) -> str:
        colour = attrs.centre_colour
        coloured = f"{colour} {bare}" if bare and rng.random() < 0.5 else bare
        background = rng.choice(
            (
                f"on a {attrs.background_colour} background",
                f"against {attrs.background_colour}",
                f"with {attrs.background_colour} behind it",
            )
        )
        mono = "black and white" if attrs.grayscale != "colour" else rng.choice(("colour", ""))
        size = rng.choice(SIZE_WORDS[attrs.size])
        fields = {
            "subject": article(coloured) if coloured else "",
            "subject_bare": bare or "",
            "position": attrs.position,
            "background": background,
            "background_colour": attrs.background_colour,
            "colour": colour,
            "light": rng.choice(LIGHT_WORDS[attrs.brightness]),
            "sized": article(f"{size} {bare}".strip()) if bare else "",
            "mono": mono,
        }
        text = template.format(**fields)
        return re.sub(r"^a a ", "a ", re.sub(r"\s+", " ", text)).strip()
