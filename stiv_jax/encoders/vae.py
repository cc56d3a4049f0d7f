"""Per-frame 2D AutoencoderKL in Linen with the `diffusers` layout (the SD / SDXL / SD3 / FLUX VAE architecture).

Encoder: conv_in -> down blocks (ResNets, stride-2 conv except the last) -> mid block (ResNet, single-head
self-attention, ResNet) -> GroupNorm, SiLU -> conv_out to `2 * latent_channels` moments (-> quant_conv if present).
Decoder mirrors it with nearest-neighbour 2x upsampling. `len(block_out_channels) - 1` halvings: 8x for 4 blocks.

Loads `diffusion_pytorch_model.safetensors` + `config.json` as written by `AutoencoderKL.save_pretrained`.
Parameter names mirror diffusers (`encoder/down_blocks_0/resnets_1/conv1/kernel` <- `encoder.down_blocks.0.
resnets.1.conv1.weight`), so `safetensors_loader` maps them without a table.
"""
from __future__ import annotations

import dataclasses
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from stiv_jax.encoders import checkpoint_dir, layers, safetensors_loader

_EPS = 1e-6  # diffusers' resnet_eps for the VAE's encoder, decoder and mid-block attention


@dataclasses.dataclass(frozen=True)
class AutoencoderKLConfig:
    """An AutoencoderKL: diffusers `config.json` field names AND `AutoencoderKL.__init__` defaults.

    A `config.json` that omits a field gets diffusers' default (one 64-channel block). `SD_VAE` / `FLUX_VAE` below
    are the public 8x VAEs. The last four fields are the latent normalisation `normalize` / `denormalize` apply.
    """

    in_channels: int = 3  # image channels in
    out_channels: int = 3  # image channels out
    block_out_channels: tuple[int, ...] = (64,)  # channels per down block (up blocks reversed); n blocks: 2^(n-1)x
    layers_per_block: int = 1  # ResNets per down block (up blocks have one more)
    latent_channels: int = 4  # latent channels (SD/SDXL 4, SD3/FLUX 16)
    norm_num_groups: int = 32  # GroupNorm groups; must divide every block's channels
    act_fn: str = "silu"  # activation
    mid_block_add_attention: bool = True  # self-attention in the mid blocks
    use_quant_conv: bool = True  # 1x1 conv after the encoder (absent in FLUX / SD3)
    use_post_quant_conv: bool = True  # 1x1 conv before the decoder
    scaling_factor: float = 0.18215  # normalised latents = (z - shift) * scaling_factor [/ latents_std]
    shift_factor: float | None = None  # SD3 / FLUX: subtracted before scaling
    latents_mean: tuple[float, ...] | None = None  # per-channel mean (e.g. Playground v2.5); needs latents_std
    latents_std: tuple[float, ...] | None = None  # per-channel std; needs latents_mean

    def __post_init__(self):
        for i, channels in enumerate(self.block_out_channels):
            checkpoint_dir.require_divisible(
                "AutoencoderKL config", numerator=(f"block_out_channels[{i}]", channels),
                denominator=("norm_num_groups", self.norm_num_groups))
        layers.activation(self.act_fn)
        if (self.latents_mean is None) != (self.latents_std is None):
            raise ValueError("latents_mean and latents_std come together (diffusers pipelines use them only as a "
                             "pair); set both or neither.")
        for name in ("latents_mean", "latents_std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.latent_channels:
                raise ValueError(f"{name} has {len(value)} values for latent_channels={self.latent_channels}.")
        if self.latents_mean is not None and self.shift_factor is not None:
            raise ValueError("shift_factor and latents_mean are both set; no diffusers pipeline combines them, so "
                             "the latent normalisation is ambiguous: set one of them to null.")

    @classmethod
    def from_dict(cls, raw: dict, *, source: str = "config.json") -> "AutoencoderKLConfig":
        """Reads a diffusers `config.json` object (omitted fields take `AutoencoderKL`'s defaults)."""
        down = raw.get("down_block_types") or ["DownEncoderBlock2D"]
        up = raw.get("up_block_types") or ["UpDecoderBlock2D"]
        for field, blocks, allowed in (("down_block_types", down, "DownEncoderBlock2D"),
                                       ("up_block_types", up, "UpDecoderBlock2D")):
            if any(block != allowed for block in blocks):
                raise ValueError(f"{source}: {field}={blocks} has blocks other than {allowed!r} "
                                 "(not an AutoencoderKL 2D VAE).")
        kwargs = checkpoint_dir.config_kwargs(cls, raw, source=source)
        channels = kwargs.get("block_out_channels", cls.block_out_channels)
        if not len(down) == len(up) == len(channels):
            raise ValueError(f"{source}: {len(down)} down_block_types, {len(up)} up_block_types and "
                             f"{len(channels)} block_out_channels; diffusers builds one block per entry, so give "
                             "the three lists the same length.")
        try:
            return cls(**kwargs)
        except ValueError as e:
            raise ValueError(f"{source}: {e}") from e

    @classmethod
    def from_json(cls, path: str) -> "AutoencoderKLConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f), source=path)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def normalize(self, z: jax.Array) -> jax.Array:
        """Raw latents `[..., latent_channels]` -> the diffusion model's, as diffusers pipelines encode them.

        `(z - latents_mean) * scaling_factor / latents_std` when the config has them (SDXL-family pipelines),
        else `(z - shift_factor) * scaling_factor` (SD3 / FLUX; shift 0 for SD).
        """
        if self.latents_mean is not None:
            mean = jnp.asarray(self.latents_mean, z.dtype)
            return (z - mean) * self.scaling_factor / jnp.asarray(self.latents_std, z.dtype)
        return (z - (self.shift_factor or 0.0)) * self.scaling_factor

    def denormalize(self, latents: jax.Array) -> jax.Array:
        """Inverse of `normalize` (what pipelines do before `vae.decode`)."""
        if self.latents_mean is not None:
            std = jnp.asarray(self.latents_std, latents.dtype)
            return latents * std / self.scaling_factor + jnp.asarray(self.latents_mean, latents.dtype)
        return latents / self.scaling_factor + (self.shift_factor or 0.0)


# The SD 1.x / SDXL VAE (4 latent channels) and the FLUX VAE (16 channels, no quant convs, shifted).
SD_VAE = AutoencoderKLConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2)
FLUX_VAE = AutoencoderKLConfig(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=16,
                               use_quant_conv=False, use_post_quant_conv=False, scaling_factor=0.3611,
                               shift_factor=0.1159)


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-conv twice plus a (1x1-projected) shortcut: `[n, h, w, c_in]` -> `[n, h, w, out]`."""

    out_channels: int
    config: AutoencoderKLConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = layers.activation(self.config.act_fn)
        groups = self.config.norm_num_groups
        h = layers.conv(self.out_channels, 3, name="conv1")(act(layers.group_norm(groups, _EPS, name="norm1")(x)))
        h = layers.conv(self.out_channels, 3, name="conv2")(act(layers.group_norm(groups, _EPS, name="norm2")(h)))
        if x.shape[-1] != self.out_channels:
            x = layers.conv(self.out_channels, 1, padding="VALID", name="conv_shortcut")(x)
        return x + h


class SpatialAttention(nn.Module):
    """Single-head self-attention over all `h * w` positions, with residual: `[n, h, w, c]` -> same."""

    config: AutoencoderKLConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        tokens = layers.group_norm(self.config.norm_num_groups, _EPS, name="group_norm")(x).reshape(n, h * w, 1, c)
        proj = lambda name: layers.dense(c, ("conv_in", "conv_out"), name=name)  # noqa: E731
        q, k, v = proj("to_q")(tokens), proj("to_k")(tokens), proj("to_v")(tokens)
        out = layers.attend(layers.attention_weights(q, k, scale=c**-0.5), v).reshape(n, h * w, c)
        return x + proj("to_out_0")(out).reshape(n, h, w, c)


class MidBlock(nn.Module):
    config: AutoencoderKLConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        x = ResnetBlock(channels, self.config, name="resnets_0")(x)
        if self.config.mid_block_add_attention:
            x = SpatialAttention(self.config, name="attentions_0")(x)
        return ResnetBlock(channels, self.config, name="resnets_1")(x)


class Downsample(nn.Module):
    """diffusers' Downsample2D(padding=0): pad right/bottom by one, 3x3 stride-2 conv."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return layers.conv(x.shape[-1], 3, strides=2, padding="VALID", name="conv")(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return layers.conv(x.shape[-1], 3, name="conv")(x)


class DownBlock(nn.Module):
    out_channels: int
    add_downsample: bool
    config: AutoencoderKLConfig

    @nn.compact
    def __call__(self, x):
        for j in range(self.config.layers_per_block):
            x = ResnetBlock(self.out_channels, self.config, name=f"resnets_{j}")(x)
        return Downsample(name="downsamplers_0")(x) if self.add_downsample else x


class UpBlock(nn.Module):
    out_channels: int
    add_upsample: bool
    config: AutoencoderKLConfig

    @nn.compact
    def __call__(self, x):
        for j in range(self.config.layers_per_block + 1):
            x = ResnetBlock(self.out_channels, self.config, name=f"resnets_{j}")(x)
        return Upsample(name="upsamplers_0")(x) if self.add_upsample else x


class Encoder(nn.Module):
    """`[n, h, w, 3]` -> moments `[n, h / f, w / f, 2 * latent_channels]`."""

    config: AutoencoderKLConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        x = layers.conv(c.block_out_channels[0], 3, name="conv_in")(x)
        for i, channels in enumerate(c.block_out_channels):
            last = i == len(c.block_out_channels) - 1
            x = DownBlock(channels, not last, c, name=f"down_blocks_{i}")(x)
        x = MidBlock(c, name="mid_block")(x)
        x = layers.activation(c.act_fn)(layers.group_norm(c.norm_num_groups, _EPS, name="conv_norm_out")(x))
        return layers.conv(2 * c.latent_channels, 3, name="conv_out")(x)


class Decoder(nn.Module):
    """`[n, h, w, latent_channels]` -> `[n, h * f, w * f, 3]`."""

    config: AutoencoderKLConfig

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        c = self.config
        channels = tuple(reversed(c.block_out_channels))
        x = layers.conv(channels[0], 3, name="conv_in")(z)
        x = MidBlock(c, name="mid_block")(x)
        for i, out in enumerate(channels):
            x = UpBlock(out, i != len(channels) - 1, c, name=f"up_blocks_{i}")(x)
        x = layers.activation(c.act_fn)(layers.group_norm(c.norm_num_groups, _EPS, name="conv_norm_out")(x))
        return layers.conv(c.out_channels, 3, name="conv_out")(x)


class AutoencoderKL(nn.Module):
    """The VAE on images `[n, height, width, 3]` in [-1, 1]; latents are unnormalised (before scaling/shift)."""

    config: AutoencoderKLConfig

    def setup(self):
        c = self.config
        self.encoder = Encoder(c)
        self.decoder = Decoder(c)
        if c.use_quant_conv:
            self.quant_conv = layers.conv(2 * c.latent_channels, 1, padding="VALID")
        if c.use_post_quant_conv:
            self.post_quant_conv = layers.conv(c.latent_channels, 1, padding="VALID")

    def encode_moments(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`[n, h, w, 3]` -> (mean, logvar) each `[n, h / f, w / f, latent_channels]` (logvar clipped to [-30, 20])."""
        moments = self.encoder(images)
        if self.config.use_quant_conv:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z: jax.Array) -> jax.Array:
        """`[n, h, w, latent_channels]` -> images `[n, h * f, w * f, 3]` (unclipped)."""
        if self.config.use_post_quant_conv:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def __call__(self, images: jax.Array) -> jax.Array:
        """Reconstruction through the posterior mean (used to create all params at init)."""
        mean, _ = self.encode_moments(images)
        return self.decode(mean)


def load_autoencoder_kl(path: str) -> tuple[AutoencoderKL, dict]:
    """Builds the VAE from the checkpoint's `config.json` and loads `diffusion_pytorch_model.safetensors`.

    `path`: a directory as `AutoencoderKL.save_pretrained` writes it (fp16 variants and sharded indexes too), one of
    its `.safetensors` files, or a Hugging Face cache repository, with the subfolder for a pipeline
    (`.../models--ORG--NAME/vae`; see `checkpoint_dir.resolve`). Older checkpoints whose mid-block attention uses
    `query/key/value/proj_attn` names are accepted too.
    """
    directory, file = checkpoint_dir.resolve(path)
    raw = checkpoint_dir.read_config(directory, loader="AutoencoderKL", accepted=("AutoencoderKL",),
                                     config_setting="config.latent.path")
    config = AutoencoderKLConfig.from_dict(raw, source=os.path.join(directory, "config.json"))
    model = AutoencoderKL(config)
    size = 2 * config.downsample_factor
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, config.in_channels)))
    aliases = {}
    for part in ("encoder", "decoder"):
        prefix = f"{part}.mid_block.attentions.0."
        for old, new in (("query", "to_q"), ("key", "to_k"), ("value", "to_v"), ("proj_attn", "to_out.0")):
            for leaf in ("weight", "bias"):
                aliases[f"{prefix}{old}.{leaf}"] = f"{prefix}{new}.{leaf}"
    params = safetensors_loader.load_params(file or directory, abstract["params"], aliases=aliases,
                                            default_name="diffusion_pytorch_model.safetensors")
    return model, params
