"""Reference statistics for FID / KID from a dataset split, as a pytorch-fid style .npz.

    python -m gm.metrics.reference_stats --dataset=cifar10 --split=train --out=stats/cifar10_train.npz \\
        [--inception_weights=PATH] [--data_dir=DIR] [--manual_dir=DIR] [--batch_size=500]
    python -m gm.metrics.reference_stats --dataset=digits --features=digits --out=stats/digits_train.npz

The file holds `mu` [D] and `sigma` [D, D] in float64 (pytorch-fid reads them), the `features` [N, D]
(for KID) and a `source` line. Point config.eval.reference at it; it is computed once, not per run.
"""
import sys

from absl import app, flags

from gm import data as gm_data
from gm.metrics import sample_quality

flags.DEFINE_string("dataset", "cifar10", f"One of the image datasets of gm.data: {gm_data.DATASETS}.")
flags.DEFINE_enum("split", "train", ["train", "test"], "The split whose statistics to compute.")
flags.DEFINE_string("out", None, "Output .npz path.")
flags.DEFINE_enum("features", "auto", list(sample_quality.FEATURES),
                  "Feature network: Inception for CIFAR-10, the domain classifier for digits / MNIST.")
flags.DEFINE_string("inception_weights", "", "The FID Inception weights (else $GM_INCEPTION_WEIGHTS).")
flags.DEFINE_string("data_dir", "", "TFDS data folder.")
flags.DEFINE_string("manual_dir", "", "Folder holding the raw download, for machines without network.")
flags.DEFINE_integer("batch_size", 500, "Images per feature batch (a multiple of the device count).")
flags.DEFINE_integer("limit", 0, "Use only the first N images of the split (0: all).")


def compute(dataset_name, split, out, features="auto", inception_weights="", data_dir="", manual_dir="",
            batch_size=500, limit=0):
    """Compute and write the statistics; returns the Reference."""
    dataset = gm_data.load(dataset_name, data_dir=data_dir or None, manual_dir=manual_dir or None)
    if dataset.info.num_bits is None:
        raise ValueError(f"--dataset={dataset_name} is not an image dataset.")
    extractor = sample_quality.make_extractor(features, dataset, inception_weights or None)
    ref = sample_quality.dataset_reference(extractor, dataset, split, batch_size, limit or None)
    sample_quality.save_reference(out, ref)
    return ref


def main(argv):
    del argv
    f = flags.FLAGS
    if not f.out:
        print("error: --out is required: the .npz file to write.", file=sys.stderr)
        sys.exit(1)
    try:
        ref = compute(f.dataset, f.split, f.out, f.features, f.inception_weights, f.data_dir, f.manual_dir,
                      f.batch_size, f.limit)
    except (ValueError, FileNotFoundError, gm_data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    print(f"Wrote {f.out}: {ref.source}, {ref.mu.shape[0]}-d")


if __name__ == "__main__":
    app.run(main)
