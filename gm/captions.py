"""Captions generated from class labels, for text-to-image models on labelled image datasets.

A caption is a phrasing of the class's name: several templates per kind of dataset ("a handwritten
seven", "the digit 7", "seven, written small"), so a model sees varied text for one class and a prompt
in any of these phrasings means the same. Captions are byte-tokenized (`gm.tokenize.ByteTokenizer`:
every prompt encodable) and padded to a fixed length with one extra token, PAD = 256, so a batch of
captions is a fixed-shape int32 array that a jitted loss can gather from (`caption_table`).
"""
import numpy as np

from gm.tokenize import ByteTokenizer

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CLASS_NAMES = {"digits": DIGIT_NAMES, "mnist": DIGIT_NAMES, "cifar10": CIFAR10_NAMES}

# {name}: the class's name; {numeral}: its index (for digits, the digit itself).
DIGIT_TEMPLATES = ("a handwritten {name}", "the digit {numeral}", "{name}, written small", "the number {name}",
                   "a {name}", "digit {numeral}", "a drawing of a {name}", "{numeral}")
OBJECT_TEMPLATES = ("a photo of a {name}", "a {name}", "a small picture of a {name}", "an image of a {name}",
                    "the {name}", "a blurry photo of a {name}")
TEMPLATES = {"digits": DIGIT_TEMPLATES, "mnist": DIGIT_TEMPLATES, "cifar10": OBJECT_TEMPLATES}
# The phrasing samples are drawn for unless a run says otherwise.
PROMPT_TEMPLATES = {"digits": "the digit {numeral}", "mnist": "the digit {numeral}", "cifar10": "a photo of a {name}"}

# What samples of a captioned dataset (COCO) are drawn for unless a run gives prompts: COCO-style captions.
CAPTION_PROMPTS = ("a red double decker bus driving down a street", "a plate of food with broccoli and rice",
                   "a man riding a wave on top of a surfboard", "a cat sitting on a wooden bench",
                   "a giraffe standing in a grassy field", "a train on the tracks at a station",
                   "a bowl of fruit on a kitchen table", "a small airplane flying in a blue sky")

TOKENIZER = ByteTokenizer()
PAD = TOKENIZER.vocab_size  # the padding token after a caption's bytes
TEXT_VOCAB = TOKENIZER.vocab_size + 1  # bytes and PAD


def class_names(dataset: str) -> tuple[str, ...]:
    """The class names of a captioned dataset; one sentence for a dataset without them."""
    if dataset not in CLASS_NAMES:
        raise ValueError(f"config.data.name={dataset!r} has no class names to caption its images with; use one of "
                         f"{', '.join(CLASS_NAMES)}.")
    return CLASS_NAMES[dataset]


def caption(template: str, label: int, dataset: str, field: str = "config.prior.prompt_template") -> str:
    """`template` filled in for class `label` of `dataset`; one sentence (naming `field`) for a template
    with other placeholders than {name} and {numeral}."""
    try:
        return template.format(name=class_names(dataset)[label], numeral=label)
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{field}={template!r} cannot be filled in ({type(e).__name__}: {e}); use the "
                         "placeholders {name} and {numeral} only.") from None


def captions(dataset: str) -> list[list[str]]:
    """Every phrasing of every class: [num_classes][num_templates] strings."""
    return [[caption(t, k, dataset) for t in TEMPLATES[dataset]] for k in range(len(class_names(dataset)))]


def encode(texts, length: int, field: str = "caption", length_field: str = "config.prior.text_len") -> np.ndarray:
    """Texts -> int32 [N, length]: their UTF-8 bytes, then PAD; one sentence (naming `field` and the
    config field `length_field` that sets `length`) for a text longer than `length` bytes."""
    out = np.full((len(texts), length), PAD, np.int32)
    for i, text in enumerate(texts):
        ids = TOKENIZER.encode(text)
        if len(ids) > length:
            raise ValueError(f"{field} {text!r} is {len(ids)} bytes, longer than {length_field}={length}; "
                             f"shorten it or raise {length_field}.")
        out[i, :len(ids)] = ids
    return out


def decode(tokens) -> str:
    """Caption tokens [L] (bytes, then PAD) -> the text."""
    tokens = np.asarray(tokens)
    return TOKENIZER.decode(tokens[tokens != PAD])


def caption_table(dataset: str, length: int, length_field: str = "config.prior.text_len") -> np.ndarray:
    """int32 [num_classes, num_templates, length]: every phrasing of every class, encoded."""
    phrasings = captions(dataset)
    flat = encode([c for per_class in phrasings for c in per_class], length, length_field=length_field)
    return flat.reshape(len(phrasings), len(phrasings[0]), length)
