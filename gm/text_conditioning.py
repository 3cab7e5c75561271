"""What a text-to-image family trains on and samples for: each image's caption, and the prompts.

On labelled images (the digits, MNIST, CIFAR-10) a caption is one of its class's phrasings
(`gm.captions.TEMPLATES`), drawn afresh each step; captioned datasets (`gm.caption_datasets`: MS-COCO)
bring their own captions. Samples are drawn for free prompts, or for a template filled in with every
class name ("the digit {numeral}"), which lets a classifier check that each sample shows its class.
Captions are byte tokens padded with `gm.captions.PAD` to a fixed length.
"""
from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gm import caption_datasets, captions


def prompt_texts(dataset: str, prompts: Sequence[str] = (), template: str = "") -> Tuple[tuple, Optional[np.ndarray]]:
    """(the prompts samples cycle through, their classes or None): the free `prompts`, else COCO-style
    prompts for captioned data, else `template` (default `gm.captions.PROMPT_TEMPLATES`) for every class."""
    if prompts:
        return tuple(prompts), None
    if dataset in caption_datasets.CAPTIONED:
        return captions.CAPTION_PROMPTS, None
    template = template or captions.PROMPT_TEMPLATES.get(dataset, "{name}")
    num_classes = len(captions.class_names(dataset))
    return tuple(captions.caption(template, k, dataset) for k in range(num_classes)), np.arange(num_classes)


def caption_sampler(info, text_len: int) -> Callable[[dict, jax.Array], jax.Array]:
    """fn(batch, key) -> int32 [B, text_len]: each image's caption, one of its phrasings (or of its own
    captions, cut at text_len bytes) drawn with `key`. Traceable; the phrasings are one constant table.
    The caller has checked that they fit (`check_captions`)."""
    if info.captions_per_image:
        def from_dataset(batch, key):
            phrasing = jax.random.randint(key, batch["label"].shape, 0, info.captions_per_image)
            text = batch["captions"][jnp.arange(phrasing.shape[0]), phrasing, :text_len].astype(jnp.int32)
            return jnp.pad(text, ((0, 0), (0, text_len - text.shape[1])), constant_values=captions.PAD)
        return from_dataset

    table = jnp.asarray(captions.caption_table(info.name, text_len))  # [classes, phrasings, L]

    def from_labels(batch, key):
        phrasing = jax.random.randint(key, batch["label"].shape, 0, table.shape[1])
        return table[batch["label"], phrasing]

    return from_labels


def mismatched_caption_sampler(info, text_len: int) -> Callable[[dict, jax.Array], jax.Array]:
    """fn(batch, key) -> int32 [B, text_len]: a caption that does not describe each image, for a
    matching-aware discriminator: a phrasing of another class drawn uniformly (labelled data), or the
    next image's caption in the batch (captioned data, where no class tells captions apart)."""
    right = caption_sampler(info, text_len)
    if info.captions_per_image:
        return lambda batch, key: jnp.roll(right(batch, key), 1, axis=0)
    num_classes = info.num_classes

    def other_class(batch, key):
        shift_key, caption_key = jax.random.split(key)
        shift = jax.random.randint(shift_key, batch["label"].shape, 1, num_classes)
        return right(dict(batch, label=(batch["label"] + shift) % num_classes), caption_key)

    return other_class


def check_captions(dataset: str, text_len: int, prompts: Sequence[str] = (), template: str = "",
                   length_field: str = "config.prior.text_len", prompts_field: str = "config.prior.prompts") -> None:
    """One sentence unless every prompt and every training caption of `dataset` fits `text_len` bytes
    (the config fields `length_field`; the prompts are `prompts_field`'s, or the template's)."""
    texts, _ = prompt_texts(dataset, prompts, template)
    captions.encode(texts, text_len, prompts_field if prompts else "the prompt", length_field)
    if dataset not in caption_datasets.CAPTIONED:
        captions.caption_table(dataset, text_len, length_field)
