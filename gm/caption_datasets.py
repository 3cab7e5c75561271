"""Image-caption datasets of `gm.data`: images with several captions each, for text-to-image models.

    {'image': uint8 [N, S, S, 3], 'captions': int16 [N, CAPTIONS, CAPTION_BYTES], 'label': int32 [N] (zeros)}

Captions are UTF-8 bytes padded with `gm.captions.PAD` (longer ones are cut at CAPTION_BYTES bytes, as
DALL-E cuts its text at 256 tokens); a model reads as many bytes as its own text length.

* coco_captions (through TFDS, about 20 GB to download): MS-COCO 2014 with Karpathy's splits, the
  text-to-image benchmark of DALL-E and its successors. Training is Karpathy's train + restval (113,287
  images), test his 5,000 test images; each image is center-cropped to a square and resized to S x S
  (area averaging), and keeps its first CAPTIONS captions (every COCO image has at least five). The
  resized arrays are cached as an .npz beside the TFDS folder, so the resize runs once.
"""
import os

import numpy as np

from gm import captions as captions_lib
from gm import tfds_prepare

CAPTIONED = ("coco_captions",)
COCO_SIZE = 32
CAPTIONS = 5
CAPTION_BYTES = 128
COCO_HOST = "images.cocodataset.org"


def encode_captions(texts, length: int = CAPTION_BYTES) -> np.ndarray:
    """Caption byte strings -> int16 [N, length]: their bytes, cut at `length`, then PAD."""
    out = np.full((len(texts), length), captions_lib.PAD, np.int16)
    for i, text in enumerate(texts):
        data = np.frombuffer(bytes(text)[:length], np.uint8)
        out[i, :len(data)] = data
    return out


def _square(image, size):
    """A TF image [H, W, 3] -> its central square, resized to [size, size, 3] uint8 by area averaging."""
    import tensorflow as tf

    shape = tf.shape(image)
    side = tf.minimum(shape[0], shape[1])
    top, left = (shape[0] - side) // 2, (shape[1] - side) // 2
    crop = image[top:top + side, left:left + side]
    resized = tf.image.resize(tf.cast(crop, tf.float32), (size, size), method="area", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def _split_arrays(builder, splits, size: int) -> dict:
    import tensorflow as tf

    def example(ex):
        texts = ex["captions"]["text"]
        repeats = -(-CAPTIONS // tf.maximum(tf.shape(texts)[0], 1))
        return _square(ex["image"], size), tf.tile(texts, [repeats])[:CAPTIONS]

    images, texts = [], []
    for split in splits:
        for image, text in builder.as_dataset(split=split).map(example).as_numpy_iterator():
            images.append(image)
            texts.append(encode_captions(list(text)))
    return {"image": np.stack(images), "captions": np.stack(texts),
            "label": np.zeros(len(images), np.int32)}


def load_coco_captions(data_dir, error, reachable, size: int = COCO_SIZE) -> tuple[dict, dict]:
    """(train, test) arrays of coco_captions at `size` x `size` (see the module docstring), from the .npz
    cache or TFDS. `error(message)` builds the exception when TFDS can neither read nor download it."""
    folder = os.path.expanduser(data_dir or "~/tensorflow_datasets")
    cache = os.path.join(folder, f"coco_captions_{size}px.npz")
    if os.path.exists(cache):
        with np.load(cache) as f:
            return ({k[6:]: f[k] for k in f.files if k.startswith("train_")},
                    {k[5:]: f[k] for k in f.files if k.startswith("test_")})
    how = ("run `tfds build coco_captions` on a machine with network (about 20 GB) and pass its folder as "
           "--config.data.data_dir, or use --config.data.name=digits (captions from the labels) to run offline.")
    builder = tfds_prepare.prepared_builder("coco_captions", data_dir or None, title="coco_captions",
                                            host=COCO_HOST, how=how, error=error, reachable=reachable)
    train = _split_arrays(builder, ("train", "restval"), size)
    test = _split_arrays(builder, ("test",), size)
    try:
        os.makedirs(folder, exist_ok=True)
        np.savez(cache + ".tmp.npz", **{f"train_{k}": v for k, v in train.items()},
                 **{f"test_{k}": v for k, v in test.items()})
        os.replace(cache + ".tmp.npz", cache)
    except OSError:
        pass  # an unwritable folder only costs the resize next time
    return train, test
