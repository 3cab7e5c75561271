"""Two unpaired image domains, A and B, for translation (CycleGAN).

Each split is {'image_a': uint8 [N, H, W, C], 'image_b': the same, 'label_a': int32 [N], 'label_b',
'label', 'first_a': bool [N], 'first_b'} (label = label_a, the array `gm.data` counts examples by). Row
i pairs an image of A with an unrelated image of B: the domains are drawn from different images, and
`gm.data.train_batch` shuffles the rows each epoch, so a batch holds unpaired images of both. The
smaller domain of a split is repeated in a fixed shuffled order up to the larger one's count, as the
authors' loader cycles it; first_a / first_b mark the first row holding each image of a domain, so an
evaluation counts every image once.

* ``digit_strokes`` (offline): the 8x8 4-bit digits (`gm.data`'s split), domain A ("thin") the digits as
  they are, domain B ("thick") their strokes thickened by a grey dilation with a 3x3 cross, each
  domain from its own half of every split, so no image of one has its counterpart in the other.
  label_a / label_b are the digit classes, for checking that a translation keeps the digit.
* ``cycle_gan/NAME`` (TFDS `cycle_gan`, e.g. horse2zebra, monet2photo): trainA / trainB and testA / testB
  at 256x256x3 (an image of another size is resized to it, bilinear with antialiasing); labels are 0.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from gm import tfds_prepare

CYCLE_GAN = ("apple2orange", "summer2winter_yosemite", "horse2zebra", "monet2photo", "cezanne2photo",
             "ukiyoe2photo", "vangogh2photo", "maps", "cityscapes", "facades", "iphone2dslr_flower")
TRANSLATION_DATASETS = ("digit_strokes",) + tuple(f"cycle_gan/{name}" for name in CYCLE_GAN)
DOMAIN_NAMES = {"digit_strokes": ("thin", "thick")}
CYCLE_GAN_HOST = "efrosgans.eecs.berkeley.edu"
CYCLE_GAN_SIZE = 256
_CROSS = ndimage.generate_binary_structure(2, 1)


def domain_names(config: str) -> tuple[str, str]:
    """The names of cycle_gan/`config`'s domains: its two sides ('horse2zebra' -> horse, zebra), or A and
    B for the sets named otherwise (maps, cityscapes, facades)."""
    a, two, b = config.partition("2")
    return (a, b) if two else ("A", "B")


def thicken(images: np.ndarray) -> np.ndarray:
    """Grey dilation of uint8 images [N, H, W, 1] by a 3x3 cross: each pixel the brightest of itself and
    its four neighbours, so a stroke gains a pixel on every side."""
    return np.stack([ndimage.grey_dilation(im[..., 0], footprint=_CROSS)[..., None] for im in images])


def pair_domains(images_a: np.ndarray, labels_a: np.ndarray, images_b: np.ndarray, labels_b: np.ndarray,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One split's arrays (module docstring): the smaller domain repeated in a shuffled order to the
    larger one's count."""
    n = max(len(images_a), len(images_b))

    def fill(images, labels):
        index = np.concatenate([rng.permutation(len(images)) for _ in range(-(-n // len(images)))])[:n]
        return images[index], labels[index].astype(np.int32)

    image_a, label_a = fill(images_a, labels_a)
    image_b, label_b = fill(images_b, labels_b)
    rows = np.arange(n)
    return {"image_a": image_a, "image_b": image_b, "label_a": label_a, "label_b": label_b, "label": label_a,
            "first_a": rows < len(images_a), "first_b": rows < len(images_b)}


def digit_strokes(digits_train: dict, digits_test: dict) -> tuple[dict, dict]:
    """(train, test) of ``digit_strokes`` from the digits' own splits {'image', 'label'}."""
    rng = np.random.default_rng(2017)  # fixed: the data never depends on a run

    def split(arrays):
        order = rng.permutation(len(arrays["label"]))
        half_a, half_b = order[: len(order) // 2], order[len(order) // 2:]
        return pair_domains(arrays["image"][half_a], arrays["label"][half_a],
                            thicken(arrays["image"][half_b]), arrays["label"][half_b], rng)

    return split(digits_train), split(digits_test)


def load_cycle_gan(name: str, data_dir: str | None, error, reachable) -> tuple[dict, dict]:
    """(train, test) of TFDS cycle_gan/`name`. `error(message)` builds the exception when TFDS can neither
    read nor download it."""
    import tensorflow as tf  # lazy: importing TensorFlow costs seconds
    import tensorflow_datasets as tfds

    how = (f"run `tfds build cycle_gan/{name}` on a machine with network and pass its folder as "
           f"--config.data.data_dir, or use --config.data.name=digit_strokes to run offline.")
    builder = tfds_prepare.prepared_builder("cycle_gan", data_dir or None, title=f"cycle_gan/{name}",
                                            host=CYCLE_GAN_HOST, how=how, error=error, reachable=reachable,
                                            config=name)
    size = CYCLE_GAN_SIZE

    def square(example):
        image = example["image"]
        resized = lambda: tf.cast(tf.round(tf.clip_by_value(
            tf.image.resize(image, (size, size), antialias=True), 0, 255)), tf.uint8)
        same = tf.logical_and(tf.shape(image)[0] == size, tf.shape(image)[1] == size)
        return tf.cond(same, lambda: image, resized)

    def images(split):
        ds = builder.as_dataset(split=split).map(square)
        return np.stack(list(tfds.as_numpy(ds))).astype(np.uint8) if len(ds) else np.zeros((0, size, size, 3), np.uint8)

    rng = np.random.default_rng(2017)
    splits = {}
    for split in ("train", "test"):
        image_a, image_b = images(f"{split}A"), images(f"{split}B")
        zeros = lambda images: np.zeros(len(images), np.int32)
        splits[split] = pair_domains(image_a, zeros(image_a), image_b, zeros(image_b), rng)
    return splits["train"], splits["test"]
