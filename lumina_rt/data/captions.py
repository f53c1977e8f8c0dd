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


def vocabulary(caption_set: str = "v1") -> list[str]:
    """The fixed word list: special tokens, then every word the templates and system prompts can produce.

    "v1": v1's 50 words (the built-in V2A model's, lumina_rt/builtin/v2a/text_vocab.txt); "v2": v1's words plus every
    word of the v2 caption set's training *and* held-out splits, so a held-out paraphrase has a token (an untrained
    one): the shipped video model's vocabulary (lumina_rt/builtin/text_vocab.txt)."""
    _check(caption_set)
    words: set[str] = set()
    for text in (*VIDEO_TEMPLATES, *IMAGE_TEMPLATES, *SYSTEM_PROMPTS.values()):
        words.update(w for w in tokenize(re.sub(r"\{\w+\}", " ", text)))
    words.update(COLOURS, SHAPES, DIRECTIONS, SPEEDS, BACKGROUNDS)
    if caption_set == "v2":
        words.update(split_words("train") | split_words("heldout"))
    return ["<pad>", "<unk>", "<sep>", *sorted(words)]


# ------------------------------------------------------------------------------------------------
# Caption set v2: paraphrases per attribute, many templates, and a held-out split (issue 29)
# ------------------------------------------------------------------------------------------------
# v1 (above) is what the shipped model was trained and evaluated on, unchanged. v2 words come in two disjoint
# splits: "train" words appear in training captions, "heldout" words only in the held-out evaluation prompts
# (and in the v2 vocabulary, so they have a token instead of an unknown-word warning). Same for templates and for
# the held-out backgrounds (lumina_rt.data.synthetic renders them only for the held-out split).

CAPTION_SETS = ("v1", "v2")
SPLITS = ("train", "heldout")

# canonical word -> (training words, held-out words); the canonical word is always a training word
COLOUR_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "red": (("red", "scarlet", "cherry"), ("crimson",)),
    "yellow": (("yellow", "golden", "lemon"), ("canary",)),
    "green": (("green", "emerald", "grassy"), ("lime",)),
    "cyan": (("cyan", "turquoise", "teal"), ("aqua",)),
    "blue": (("blue", "cobalt", "royal"), ("azure",)),
    "magenta": (("magenta", "fuchsia", "pink"), ("orchid",)),
}
SHAPE_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "circle": (("circle", "disc", "ball"), ("orb",)),
    "square": (("square", "box", "tile"), ("block",)),
    "triangle": (("triangle", "wedge", "trigon"), ("pyramid",)),
}
DIRECTION_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "left": (("left", "leftward", "leftwards"), ("west",)),
    "right": (("right", "rightward", "rightwards"), ("east",)),
    "up": (("up", "upward", "upwards"), ("north",)),
    "down": (("down", "downward", "downwards"), ("south",)),
}
SPEED_WORDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "slowly": (("slowly", "gently", "lazily"), ("sluggishly",)),
    "steadily": (("steadily", "evenly", "moderately"), ("smoothly",)),
    "quickly": (("quickly", "fast", "rapidly"), ("swiftly",)),
}
# background kind (lumina_rt.data.synthetic.V2_BACKGROUNDS) -> words naming it; held-out kinds are never rendered
# for training, their words never appear in training captions
BACKGROUND_WORDS: dict[str, tuple[str, ...]] = {
    "plain": ("plain", "blank"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotty"),
    "checkered": ("checkered", "chequered"),
    "gradient": ("gradient", "shaded"),
    "mottled": ("mottled", "cloudy"),
    "wavy": ("wavy",),  # held out
    "grid": ("grid", "lattice"),  # held out
}
V2_BACKGROUND_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("plain", "striped", "dotted", "checkered", "gradient", "mottled"),
    "heldout": ("wavy", "grid"),
}

# Templates: {colour} {shape} {direction} {speed} {background}; {filler} is an optional adjective or nothing.
V2_VIDEO_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "a {colour} {shape} moving {direction} {speed} on a {background} background",
        "{colour} {shape} going {direction} {speed} , {background} background",
        "the {colour} {shape} slides {direction} {speed} over a {background} background",
        "a {filler} {colour} {shape} travels {direction} {speed} across a {background} backdrop",
        "{speed} , a {colour} {shape} heads {direction} in front of a {background} background",
        "on a {background} background a {filler} {colour} {shape} moves {speed} {direction}",
        "video of a {colour} {shape} drifting {direction} {speed} , {background} scene",
        "{background} background with a {colour} {shape} that goes {direction} {speed}",
    ),
    "heldout": (
        "watch the {colour} {shape} glide {direction} {speed} past a {background} wall",
        "here the {colour} {shape} is sailing {speed} toward the {direction} , against a {background} surface",
        "footage showing one {filler} {colour} {shape} , heading {direction} , {speed} , atop {background} ground",
    ),
}
V2_IMAGE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "a {colour} {shape} on a {background} background",
        "still image of a {colour} {shape} , {background} background",
        "a {filler} {colour} {shape} resting on a {background} backdrop",
        "picture of a {colour} {shape} in front of a {background} background",
    ),
    "heldout": ("snapshot showing one {filler} {colour} {shape} upon {background} ground",),
}
V2_FILLERS: dict[str, tuple[str, ...]] = {
    "train": ("small", "bright", "little", "single"),
    "heldout": ("shiny", "lone"),
}


def _split_words(table: dict[str, tuple[tuple[str, ...], tuple[str, ...]]], key: str, split: str) -> tuple[str, ...]:
    train, heldout = table[key]
    return train if split == "train" else heldout


def _check(caption_set: str | None = None, split: str | None = None) -> None:
    if caption_set is not None and caption_set not in CAPTION_SETS:
        raise ValueError(f"unknown caption set {caption_set!r}; known: {CAPTION_SETS}")
    if split is not None and split not in SPLITS:
        raise ValueError(f"unknown caption split {split!r}; known: {SPLITS}")


def _pick(words: tuple[str, ...], choice: int) -> str:
    return words[choice % len(words)]


def video_caption_v2(
    colour: str, shape: str, direction: str, speed: str, background: str, choice: int = 0, split: str = "train"
) -> str:
    """A v2 caption of canonical attributes: `choice` (any int) picks the template, each synonym and the filler."""
    _check(split=split)
    templates, fillers = V2_VIDEO_TEMPLATES[split], V2_FILLERS[split]
    c = int(choice)
    return templates[c % len(templates)].format(
        colour=_pick(_split_words(COLOUR_WORDS, colour, split), c // 7),
        shape=_pick(_split_words(SHAPE_WORDS, shape, split), c // 11),
        direction=_pick(_split_words(DIRECTION_WORDS, direction, split), c // 13),
        speed=_pick(_split_words(SPEED_WORDS, speed, split), c // 17),
        background=_pick(BACKGROUND_WORDS[background], c // 19),
        filler=_pick(fillers, c // 23),
    )


def image_caption_v2(colour: str, shape: str, background: str, choice: int = 0, split: str = "train") -> str:
    _check(split=split)
    templates, fillers = V2_IMAGE_TEMPLATES[split], V2_FILLERS[split]
    c = int(choice)
    return templates[c % len(templates)].format(
        colour=_pick(_split_words(COLOUR_WORDS, colour, split), c // 7),
        shape=_pick(_split_words(SHAPE_WORDS, shape, split), c // 11),
        background=_pick(BACKGROUND_WORDS[background], c // 19),
        filler=_pick(fillers, c // 23),
    )


def split_words(split: str) -> set[str]:
    """Every word a v2 caption of `split` can contain (templates, fillers, attribute words, background words)."""
    _check(split=split)
    words: set[str] = set()
    for text in (*V2_VIDEO_TEMPLATES[split], *V2_IMAGE_TEMPLATES[split], *V2_FILLERS[split]):
        words.update(tokenize(re.sub(r"\{\w+\}", " ", text)))
    for table in (COLOUR_WORDS, SHAPE_WORDS, DIRECTION_WORDS, SPEED_WORDS):
        for key in table:
            words.update(_split_words(table, key, split))
    for kind in V2_BACKGROUND_SPLITS[split]:
        words.update(BACKGROUND_WORDS[kind])
    return words


def word_concepts() -> dict[str, str]:
    """v2 attribute word -> the canonical word it paraphrases (both splits), e.g. "crimson" -> "red"; what a
    synonym-aware text embedding needs to place a paraphrase next to the word it means."""
    out: dict[str, str] = {}
    for table in (COLOUR_WORDS, SHAPE_WORDS, DIRECTION_WORDS, SPEED_WORDS):
        for key, (train, heldout) in table.items():
            out.update({w: key for w in (*train, *heldout)})
    for kind, words in BACKGROUND_WORDS.items():
        out.update({w: kind for w in words})
    return out
