"""Template captions, per-source system prompts, the fixed vocabulary, and the held-out combinations.

Speeds are in the motion-score unit of `lumina_rt.data.motion`: mean object displacement in pixels per frame,
measured on (or rescaled to) a 32-pixel-wide frame.
"""

from __future__ import annotations

import re

# Saturated object colours (RGB in [0, 1]); backgrounds are low-saturation, so the object is what is saturated.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.10, 0.10),
    "yellow": (0.95, 0.90, 0.10),
    "green": (0.10, 0.85, 0.15),
    "cyan": (0.10, 0.85, 0.95),
    "blue": (0.15, 0.25, 0.95),
    "magenta": (0.90, 0.10, 0.90),
}
SHAPES = ("circle", "square", "triangle")
# direction word -> unit step (dx, dy) in image coordinates (y grows downwards)
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS = ("slowly", "steadily", "quickly")
# speed word -> generator speed range (pixels per frame at 32 px); the caption word is chosen from the *measured*
# motion score with `speed_word`, so captions and scores agree with what the frames show.
SPEED_RANGES: dict[str, tuple[float, float]] = {"slowly": (0.35, 0.8), "steadily": (1.05, 1.6), "quickly": (1.9, 2.7)}
BACKGROUNDS = ("plain", "striped", "dotted", "checkered")

# One system prompt per data source (multi-source training); caption dropout keeps it.
SYSTEM_PROMPTS: dict[str, str] = {
    "toon": "source toon : clean flat cartoon clip with bright pastel background",
    "grainy": "source grainy : dark noisy camera clip with textured background",
}
DEFAULT_SOURCE = "toon"

VIDEO_TEMPLATES = (
    "a {colour} {shape} moving {direction} {speed} on a {background} background",
    "{colour} {shape} going {direction} {speed} , {background} background",
    "the {colour} {shape} slides {direction} {speed} over a {background} background",
)
IMAGE_TEMPLATES = (
    "a {colour} {shape} on a {background} background",
    "still image of a {colour} {shape} , {background} background",
)

# (colour, shape, direction) combinations never shown in training videos: the evaluation prompts use them.
# Each colour, shape and direction still appears in training in other combinations.
HELD_OUT: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "left"),
    ("yellow", "square", "up"),
    ("green", "triangle", "right"),
    ("cyan", "circle", "down"),
    ("blue", "square", "left"),
    ("magenta", "triangle", "up"),
    ("red", "triangle", "down"),
    ("yellow", "circle", "right"),
    ("green", "square", "down"),
    ("cyan", "triangle", "left"),
    ("blue", "circle", "up"),
    ("magenta", "square", "right"),
)


def is_held_out(colour: str, shape: str, direction: str) -> bool:
    return (colour, shape, direction) in HELD_OUT


def speed_word(score: float) -> str:
    """The speed word of a measured motion score (boundaries halfway between the generator's ranges)."""
    if score < 0.5 * (SPEED_RANGES["slowly"][1] + SPEED_RANGES["steadily"][0]):
        return "slowly"
    if score < 0.5 * (SPEED_RANGES["steadily"][1] + SPEED_RANGES["quickly"][0]):
        return "steadily"
    return "quickly"


def video_caption(colour: str, shape: str, direction: str, speed: str, background: str, template: int = 0) -> str:
    return VIDEO_TEMPLATES[template % len(VIDEO_TEMPLATES)].format(
        colour=colour, shape=shape, direction=direction, speed=speed, background=background
    )


def image_caption(colour: str, shape: str, background: str, template: int = 0) -> str:
    return IMAGE_TEMPLATES[template % len(IMAGE_TEMPLATES)].format(colour=colour, shape=shape, background=background)


def tokenize(text: str) -> list[str]:
    """Lower-case words and punctuation marks."""
    return re.findall(r"[a-z]+|[^\sa-z]", text.lower())


def vocabulary() -> list[str]:
    """The fixed word list: special tokens, then every word the templates and system prompts can produce."""
    words: set[str] = set()
    for text in (*VIDEO_TEMPLATES, *IMAGE_TEMPLATES, *SYSTEM_PROMPTS.values()):
        words.update(w for w in tokenize(re.sub(r"\{\w+\}", " ", text)))
    words.update(COLOURS, SHAPES, DIRECTIONS, SPEEDS, BACKGROUNDS)
    return ["<pad>", "<unk>", "<sep>", *sorted(words)]
