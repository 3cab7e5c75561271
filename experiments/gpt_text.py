"""A GPT-style character-level language model on Tiny Shakespeare, nanoGPT's `shakespeare_char` recipe.

    python -m experiments.gpt_text --workdir=runs/gpt_text
    python -m experiments.gpt_text --workdir=runs/gpt_text --mode=eval
    python -m experiments.gpt_text --workdir=runs/gpt_text --mode=sample --config.sampling.prompt=ROMEO:
    python -m experiments.gpt_text --workdir=runs/gpt_bpe --config.data.tokenizer=bpe1024
    python -m experiments.gpt_text --workdir=runs/smoke --config=experiments/gpt_text.py:smoke

The default aims at nanoGPT's number for this model: validation loss 1.4697 nats per character (2.12
bits per character) after 5,000 steps (Karpathy's nanoGPT README, `config/train_shakespeare_char.py`).
Its settings: bytes as tokens (the corpus is ASCII, so a byte is a character; nanoGPT's own vocabulary
is the 65 characters present, which changes nothing a model learns to assign zero to), windows of 256,
6 layers, 6 heads, width 384, dropout 0.2, tied embeddings, learned positions (10.7M parameters);
AdamW at 1e-3 with b2 = 0.99 and weight decay 0.1 on the matrices only, 100 warm-up steps then a cosine
to 1e-4 at step 5,000, gradient clipping at 1.0, batch 64, no parameter EMA. Where gm differs: its
linear layers have biases (nanoGPT's `bias=False`), each window's first character is predicted from a
start token rather than from the character before the window, and the test number is the exact mean
over every non-overlapping 256-character window of the validation split (nanoGPT averages 200 random
batches). --mode=eval prints bits per byte; nats per character are that times ln 2.

`python -m experiments.independent_pixels --config=experiments/gpt_text.py` prints the unigram and bigram
baselines on the same windows through the same harness. Samples are text files; --config.sampling.*
sets temperature, top_k and top_p (nanoGPT's sample.py: 0.8 and 200) and a prompt. The smoke variant
trains a tiny model on CPython's bundled pydoc topics (offline) in about a minute on 2 cores.
"""
from gm import families
from gm.config import variant
from gm.train import run


def get_config(arg=None):
    """nanoGPT's shakespeare_char; arg='smoke' is a tiny offline variant on the pydoc topics."""
    config = families.default_config("gpt")  # config.model: 6 layers, 6 heads, width 384, dropout 0.2
    config.data.update(name="tiny_shakespeare", tokenizer="bytes", context=256)
    config.optim.update(learning_rate=1e-3, warmup_steps=100, cosine_steps=4900, final_lr_fraction=0.1, b2=0.99,
                        weight_decay=0.1, weight_decay_on="matrices", grad_clip=1.0, ema_decay=0.0)
    config.train.update(batch_size=64, num_steps=5000, log_every=50, checkpoint_every=1000, sample_every=1000,
                        num_samples=4)
    config.eval.update(metrics=("bpd",), batch_size=64, every=1000)
    config.sampling.update(temperature=0.8, top_k=200)
    config.sample.update(num=8, batch_size=8)
    return variant(config, arg, "gpt_text", smoke=smoke)


def smoke(config):
    config.data.update(name="pydoc", context=64)
    config.model.update(num_layers=2, num_heads=2, embed_dim=64, dropout=0.0)
    config.optim.update(learning_rate=3e-3, warmup_steps=20, cosine_steps=280)
    config.train.update(batch_size=32, num_steps=300, log_every=50, checkpoint_every=150, sample_every=300,
                        num_samples=2)
    config.eval.update(batch_size=64, every=0, num_examples=256)
    config.sample.update(num=2, batch_size=2)


if __name__ == "__main__":
    run.main(__file__)
