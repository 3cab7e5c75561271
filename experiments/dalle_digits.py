"""Text-to-image in the manner of DALL-E 1 on the digits: captions such as "a handwritten seven" in, images out.

    python -m experiments.dalle_digits --workdir=runs/dalle                     # stage 1, then stage 2
    python -m experiments.dalle_digits --workdir=runs/dalle --mode=eval         # fid_digits, class accuracy
    python -m experiments.dalle_digits --workdir=runs/dalle --mode=eval --config.prior.candidates=1   # no re-ranking
    python -m experiments.dalle_digits --workdir=runs/dalle --mode=sample \\
        --config.prior.prompt_template="a handwritten {name}"
    python -m experiments.dalle_digits --workdir=runs/dalle --mode=sample \\
        --config.prior.prompts='("a 3", "seven, written small")'
    python -m experiments.dalle_digits --workdir=runs/mnist --config=experiments/dalle_digits.py:mnist
    python -m experiments.dalle_digits --workdir=runs/coco --config=experiments/dalle_digits.py:coco
    python -m experiments.dalle_digits --workdir=runs/smoke --config=experiments/dalle_digits.py:smoke

Stage 1 trains a VQ-VAE in WORKDIR/vqvae (a 4x4 grid of 32 codes for the 8x8 digits); stage 2 trains the
joint transformer over [caption bytes ; codes] in WORKDIR/prior, with each image's caption a phrasing of
its label drawn afresh every step (`gm.captions`: eight phrasings per digit). DALL-E's choices kept at
this scale: one decoder-only transformer over both modalities with separate position embeddings (text
positions; rows and columns of the grid), the text loss weighted 1/8 and the image loss 7/8, a frozen
discrete autoencoder, and re-ranking a batch of candidates per prompt (`config.prior.candidates`; by the
transformer's own log p(image | text) here, where DALL-E uses CLIP; 8 by default). DALL-E's own scale (a
12B transformer, 256 BPE text tokens, a 32x32 grid of 8,192 codes, 250M pairs) is not attempted.

With 1,437 training digits the prior's length and regularisation are set by the test bits per code:
4 layers of 128, dropout 0.3, AdamW weight decay 0.1 on matrices, 2,000 steps with a cosine to 10%.
Trained three times longer with dropout 0.1, the same network reached 99% class accuracy by copying:
93% of its samples were exactly the code grid of a training image, and its test bits per code (7.0)
were worse than a uniform guess over 32 codes (5.0). benchmarks/RESULTS.md has the measurements.

--mode=eval reports the test bits per code of log p(codes | caption) and, on samples drawn for "the digit
k" (config.prior.prompt_template; free texts go in config.prior.prompts), fid_digits and
class_accuracy_digits: the share of samples gm's digits classifier assigns to the class asked for. The
sample grids have a row per prompt, the prompt written beside it (and listed in a .txt next to the PNG).
The mnist variant runs the same on MNIST's 28x28 digits (downloaded through TFDS; a 7x7 grid of 128 codes).
The coco variant trains on MS-COCO's own captions (TFDS coco_captions, Karpathy's splits, 32x32 crops:
`gm.caption_datasets`) with the VQ-VAE paper's CIFAR-10 networks (an 8x8 grid of 512 codes), the
captions' first 96 bytes, and a transformer of 8 layers of 256; its samples are drawn for COCO-style
prompts (`gm.captions.CAPTION_PROMPTS`) and scored with Inception FID against the training images.
"""
from gm import families
from gm.config import variant
from gm.train import run


def get_config(arg=None):
    """The digits (offline); arg='mnist' for MNIST, arg='smoke' for a tiny run of a minute."""
    config = families.default_config("dalle")
    config.data.update(name="digits")
    config.model.update(num_codes=32, code_dim=16, channels=(64,), num_res_blocks=1, res_hidden=32)
    config.optim.update(learning_rate=1e-3, ema_decay=0.0)
    config.train.update(batch_size=64, num_steps=3000, log_every=100, checkpoint_every=1000, sample_every=1000,
                        num_samples=64)
    # 1,437 training digits: the regularisation and length that give the lowest test bits per code; longer
    # or weaker, the transformer learns the training images' code grids by heart (benchmarks/RESULTS.md).
    config.prior.update(num_layers=4, num_heads=4, embed_dim=128, dropout=0.3, text_len=24, candidates=8)
    config.prior_optim.update(learning_rate=1e-3, warmup_steps=100, cosine_steps=1900, final_lr_fraction=0.1,
                              weight_decay=0.1, weight_decay_on="matrices", grad_clip=1.0, ema_decay=0.999)
    config.prior_train.update(batch_size=64, num_steps=2000, log_every=100, checkpoint_every=500,
                              sample_every=1000, num_samples=50)
    config.eval.update(metrics=("bpd", "fid"), batch_size=120, num_samples=1000, sample_batch_size=250)
    config.sample.update(num=100, batch_size=100)
    return variant(config, arg, "dalle_digits", smoke=smoke, mnist=mnist, coco=coco)


def mnist(config):
    config.data.update(name="mnist")
    config.model.update(num_codes=128, code_dim=32, channels=(64, 64), num_res_blocks=2, res_hidden=64)
    config.train.update(num_steps=20_000, checkpoint_every=5000, sample_every=5000)
    config.prior.update(num_layers=6, num_heads=8, embed_dim=256)
    config.prior.update(dropout=0.1)
    config.prior_optim.update(cosine_steps=49_900)
    config.prior_train.update(num_steps=50_000, checkpoint_every=5000, sample_every=10_000)
    config.eval.update(batch_size=500, num_samples=10_000, sample_batch_size=500)


def coco(config):
    config.data.update(name="coco_captions", random_flip=False)  # a flip would contradict "on the left"
    config.model = families.default_config("dalle").model  # the VQ-VAE paper's CIFAR-10 networks
    config.optim.update(learning_rate=2e-4)
    config.train.update(batch_size=128, num_steps=100_000, checkpoint_every=10_000, sample_every=10_000)
    config.prior.update(num_layers=8, num_heads=8, embed_dim=256, dropout=0.1, text_len=96)
    config.prior_optim.update(learning_rate=3e-4, warmup_steps=1000, cosine_steps=199_000)
    config.prior_train.update(batch_size=128, num_steps=200_000, checkpoint_every=10_000, sample_every=20_000,
                              num_samples=32)
    config.eval.update(batch_size=500, num_samples=10_000, sample_batch_size=500)
    config.sample.update(num=64, batch_size=64)


def smoke(config):
    config.model.update(num_codes=16, code_dim=8, channels=(32,), res_hidden=16)
    config.train.update(batch_size=32, num_steps=200, log_every=50, checkpoint_every=100, sample_every=200,
                        num_samples=16)
    config.prior.update(num_layers=2, num_heads=2, embed_dim=32, dropout=0.0, candidates=1)
    config.prior_optim.update(learning_rate=3e-3, warmup_steps=0, cosine_steps=0)
    config.prior_train.update(batch_size=32, num_steps=200, log_every=50, checkpoint_every=100, sample_every=200,
                              num_samples=20)
    config.eval.update(metrics=("bpd", "fid"), batch_size=40, num_samples=100, sample_batch_size=50)
    config.sample.update(num=20, batch_size=20)


if __name__ == "__main__":
    run.main(__file__)
