"""Neural network architectures and their building blocks."""
from gm.nn.layers import (
    AttnBlock,
    Downsample,
    GroupNorm,
    ResnetBlock,
    Upsample,
    default_init,
    num_groups,
    timestep_embedding,
)
from gm.nn.song_unet import SongUNet
from gm.nn.unet import UNet

__all__ = [
    "AttnBlock",
    "Downsample",
    "GroupNorm",
    "ResnetBlock",
    "SongUNet",
    "UNet",
    "Upsample",
    "default_init",
    "num_groups",
    "timestep_embedding",
]
