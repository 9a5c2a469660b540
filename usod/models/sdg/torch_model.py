"""SDG-SOD networks (seed 003): the PVT-SOD branch, the caption-guidance branch and their fusion (eq. 3).

Plain ``nn.Module`` code, no Lightning:

* :class:`PVTSOD`: a PVT-v2 encoder (any timm ``pvt_v2_*`` through :mod:`usod.models.backbones`) giving four
  levels ``F_1..F_4`` at strides 4-32, and the all-MLP decoder of SegFormer (:class:`MLPDecoder`): each level
  projected to one width by a linear layer, resized to 1/4 of the image, concatenated and fused, then a final
  linear layer predicts the saliency logits (Sec. 3.3, last paragraph).
* :class:`CaptioningModel`: the semantically distilled guidance (SDG) branch, a VirTex-style captioner: a
  visual encoder giving grid features (:class:`GridEncoder`) and transformer textual decoders that caption
  the image forwards and backwards (:class:`TextualDecoder`, built from :class:`CaptionDecoderLayer`, whose
  cross-attention weights are returned). :meth:`CaptioningModel.describe` generates a caption greedily and
  returns one word-level attention map ``M_j`` per generated word (Sec. 3.2).
* :func:`guidance_map` and :class:`GuidanceFusion`: eq. 3, ``F_i' = xi(F_i * normalize(sum_j Resize(M_j)))
  + F_i`` at every level.
* :class:`SDGSODModel`: the three together.

Which attention map belongs to word ``j``: the decoder state that *emits* word ``j`` is the one at position
``j - 1`` (its input is ``c_{j-1}``), so ``M_j`` is that position's cross-attention over the grid, averaged
over heads, from the decoder layer ``attention_layer`` (the last by default). Each ``M_j`` sums to 1 over the
grid (it is a softmax row).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "NORMALIZATIONS",
    "CaptionDecoderLayer",
    "CaptioningModel",
    "Guidance",
    "GridEncoder",
    "GuidanceFusion",
    "MLPDecoder",
    "PVTSOD",
    "SDGSODModel",
    "TextualDecoder",
    "WordAndPositionEmbedding",
    "guidance_map",
    "normalize_map",
    "reverse_captions",
    "sine_position_2d",
]

NORMALIZATIONS: tuple[str, ...] = ("max", "minmax")
_EPS = 1e-8


# ---------------------------------------------------------------------------------------------- PVT-SOD
class MLPDecoder(nn.Module):
    """SegFormer's all-MLP decoder with a one-channel saliency head.

    Each level goes through a linear layer (a 1x1 convolution) to ``dim`` channels and is resized bilinearly
    to the resolution of the first level (1/4 of the image for PVT); the levels are concatenated, fused by a
    linear layer with BatchNorm and ReLU (SegFormer's ``linear_fuse``), and a last linear layer predicts one
    logit per pixel.

    Args:
        in_channels: Channels of each level, finest first.
        dim: Common width of the levels (256 in SegFormer-B0 and in SDG-SOD's B0-size setting).
        dropout: Dropout before the last layer (SegFormer: 0.1).
    """

    def __init__(self, in_channels: Sequence[int], dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.proj = nn.ModuleList(nn.Conv2d(int(c), dim, 1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(dim * len(in_channels), dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)
        )
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(dim, 1, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        """Logits Bx1xhxw at the resolution of ``features[0]``."""
        if len(features) != len(self.proj):
            raise ValueError(f"MLPDecoder expects {len(self.proj)} levels, got {len(features)}")
        size = features[0].shape[-2:]
        aligned = [p(f) for p, f in zip(self.proj, features, strict=True)]
        aligned = [
            a if a.shape[-2:] == size else F.interpolate(a, size=size, mode="bilinear", align_corners=False)
            for a in aligned
        ]
        return self.head(self.dropout(self.fuse(torch.cat(aligned, dim=1))))


class PVTSOD(nn.Module):
    """The PVT-SOD branch: a multi-level encoder and the all-MLP decoder.

    Args:
        encoder: A :class:`usod.models.backbones.Encoder` (``pvt_v2_b0`` ... ``pvt_v2_b5``) returning four
            levels; any multi-level timm encoder works.
        dim: Width of the MLP decoder.
        dropout: Dropout of the MLP decoder.
    """

    def __init__(self, encoder: nn.Module, dim: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.channels = [int(c) for c in encoder.channels]  # type: ignore[attr-defined]
        self.decoder = MLPDecoder(self.channels, dim=dim, dropout=dropout)

    def features(self, images: Tensor) -> list[Tensor]:
        """The encoder's levels ``F_1..F_4`` for Bx3xHxW images in [0, 1]."""
        return list(self.encoder(images))

    def decode(self, features: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """Saliency logits Bx1xHxW (upsampled to ``size``) from (possibly fused) levels."""
        logits = self.decoder(features)
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)

    def forward(self, images: Tensor) -> Tensor:
        """Saliency logits Bx1xHxW."""
        return self.decode(self.features(images), images.shape[-2:])


# ---------------------------------------------------------------------------------------------- captioner
def sine_position_2d(dim: int, h: int, w: int, device: torch.device | None = None) -> Tensor:
    """Fixed 2-D sine/cosine position codes, ``(h*w) x dim`` (half the channels for y, half for x)."""
    if dim % 4:
        raise ValueError(f"2-D sine positions need a width divisible by 4, got {dim}")
    quarter = dim // 4
    freq = torch.exp(-math.log(10000.0) * torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys = torch.arange(h, device=device, dtype=torch.float32)[:, None] * freq  # h x quarter
    xs = torch.arange(w, device=device, dtype=torch.float32)[:, None] * freq
    y = torch.cat([ys.sin(), ys.cos()], dim=1)[:, None, :].expand(h, w, 2 * quarter)
    x = torch.cat([xs.sin(), xs.cos()], dim=1)[None, :, :].expand(h, w, 2 * quarter)
    return torch.cat([y, x], dim=-1).reshape(h * w, dim)


class GridEncoder(nn.Module):
    """The captioner's visual encoder: the last level of a CNN as a grid of ``d_model``-wide tokens.

    The image is resized to ``image_size`` first (the paper: ResNet-50 on 224x224 images, a 7x7 grid), the
    last feature map is flattened and linearly projected (VirTex's visual projection), and fixed 2-D sine
    position codes are added (not in VirTex or the paper: they let the attention use where a patch is, which
    the captions of the synthetic data name).

    Args:
        encoder: A :class:`usod.models.backbones.Encoder`; its last level is used.
        d_model: Token width of the textual decoder.
        image_size: Side of the square input of the encoder (``0`` keeps the input size).
        positions: Add the sine position codes.
    """

    def __init__(
        self, encoder: nn.Module, d_model: int, image_size: int = 224, positions: bool = True
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Linear(int(encoder.channels[-1]), d_model)  # type: ignore[attr-defined]
        self.norm = nn.LayerNorm(d_model)
        self.image_size = int(image_size)
        self.positions = positions
        self.d_model = d_model

    def forward(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``(tokens BxNxD, (gh, gw))`` for Bx3xHxW images in [0, 1], ``N = gh * gw``."""
        if self.image_size and tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        grid = self.encoder(images)[-1]
        b, _, gh, gw = grid.shape
        tokens = self.norm(self.proj(grid.flatten(2).transpose(1, 2)))
        if self.positions:
            tokens = tokens + sine_position_2d(self.d_model, gh, gw, tokens.device).to(tokens.dtype)
        return tokens, (int(gh), int(gw))


class WordAndPositionEmbedding(nn.Module):
    """Word embedding plus a learned position embedding, LayerNorm and dropout (VirTex's textual input)."""

    def __init__(self, vocab_size: int, dim: int, max_length: int, dropout: float = 0.1, pad_id: int = 0):
        super().__init__()
        self.words = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.positions = nn.Embedding(max_length, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.max_length = max_length
        # BERT/VirTex initialisation: with N(0, 1) the tied output layer would start with huge logits
        for emb in (self.words, self.positions):
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.words.weight[pad_id].zero_()

    def forward(self, tokens: Tensor) -> Tensor:
        length = tokens.shape[1]
        if length > self.max_length:
            raise ValueError(f"caption of {length} tokens is longer than max_length={self.max_length}")
        pos = torch.arange(length, device=tokens.device)
        return self.dropout(self.norm(self.words(tokens) + self.positions(pos)[None]))


class CaptionDecoderLayer(nn.Module):
    """A pre-norm transformer decoder layer that returns its cross-attention weights.

    ``x = x + SelfAttn(LN(x))`` (causal), ``x = x + CrossAttn(LN(x), memory)``, ``x = x + FFN(LN(x))``. The
    cross-attention has no attention dropout, so its weights are exact softmax rows in training too.

    Args:
        dim: Token width.
        heads: Attention heads.
        ffn_dim: Hidden width of the feed-forward block.
        dropout: Dropout on each residual branch (and on the self-attention weights).
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = nn.MultiheadAttention(dim, heads, dropout=0.0, batch_first=True)
        self.norm3 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, memory: Tensor, causal_mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, weights)``: updated BxTxD tokens and cross-attention weights B x heads x T x N."""
        h = self.norm1(x)
        x = x + self.dropout(self.self_attn(h, h, h, attn_mask=causal_mask, need_weights=False)[0])
        h = self.norm2(x)
        out, weights = self.cross_attn(h, memory, memory, need_weights=True, average_attn_weights=False)
        x = x + self.dropout(out)
        x = x + self.dropout(self.ffn(self.norm3(x)))
        return x, weights


class TextualDecoder(nn.Module):
    """A stack of :class:`CaptionDecoderLayer` over a (shared) embedding, with the output layer tied to the
    word embedding (as VirTex).

    Args:
        embedding: The :class:`WordAndPositionEmbedding` (shared by the forward and backward decoders).
        layers: Number of layers.
        heads: Attention heads.
        ffn_dim: Feed-forward width.
        dropout: Dropout.
    """

    def __init__(
        self, embedding: WordAndPositionEmbedding, layers: int, heads: int, ffn_dim: int, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.embedding = embedding
        dim = embedding.words.embedding_dim
        self.layers = nn.ModuleList(CaptionDecoderLayer(dim, heads, ffn_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor, memory: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``(logits BxTxV, [cross-attention B x heads x T x N per layer])`` for BxT input ids."""
        x = self.embedding(tokens)
        t = tokens.shape[1]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool, device=tokens.device), diagonal=1)
        weights = []
        for layer in self.layers:
            x, w = layer(x, memory, causal)
            weights.append(w)
        logits = F.linear(self.norm(x), self.embedding.words.weight)
        return logits, weights


def reverse_captions(tokens: Tensor, pad_id: int = 0) -> Tensor:
    """``[SOS] w_1..w_n [EOS] [PAD]...`` -> ``[SOS] w_n..w_1 [EOS] [PAD]...`` row by row (BxL ids)."""
    b, length = tokens.shape
    n = (tokens != pad_id).sum(dim=1) - 2  # words per row
    pos = torch.arange(length, device=tokens.device)[None].expand(b, length)
    inside = (pos >= 1) & (pos <= n[:, None])
    source = torch.where(inside, n[:, None] + 1 - pos, pos)
    return tokens.gather(1, source)


@dataclass
class Guidance:
    """What the captioner says about a batch of images.

    Attributes:
        tokens: BxL generated ids ``[SOS] w_1 .. w_T [EOS] [PAD]...`` (``[EOS]`` missing when cut at
            ``max_length``).
        lengths: B numbers of generated words ``T_b`` (``[EOS]`` not counted).
        maps: B x Tmax x gh x gw word attention maps, ``maps[b, j-1] = M_j`` of image ``b``; zero past
            ``lengths[b]``. Each valid map sums to 1.
        valid: B x Tmax bool, true for ``j <= lengths[b]``.
    """

    tokens: Tensor
    lengths: Tensor
    maps: Tensor
    valid: Tensor


class CaptioningModel(nn.Module):
    """The SDG branch: grid visual encoder + forward (and backward) transformer textual decoders (VirTex).

    The two decoders share the embedding (and so the tied output layer) and the visual projection; only the
    forward one generates captions and attention maps.

    Args:
        visual: The :class:`GridEncoder`.
        vocab_size: Number of token ids.
        layers: Decoder layers.
        heads: Attention heads.
        ffn_dim: Feed-forward width (default ``4 * d_model``).
        dropout: Dropout.
        max_length: Longest token sequence (``[SOS]`` and ``[EOS]`` included).
        bidirectional: Also train a backward decoder (VirTex's bicaptioning).
        attention_layer: Decoder layer whose cross-attention gives the word maps (``-1``: the last).
        pad_id: Id of ``[PAD]``.
        sos_id: Id of ``[SOS]``.
        eos_id: Id of ``[EOS]``.
    """

    def __init__(
        self,
        visual: GridEncoder,
        vocab_size: int,
        layers: int = 2,
        heads: int = 4,
        ffn_dim: int | None = None,
        dropout: float = 0.1,
        max_length: int = 40,
        bidirectional: bool = True,
        attention_layer: int = -1,
        pad_id: int = 0,
        sos_id: int = 2,
        eos_id: int = 3,
    ) -> None:
        super().__init__()
        d_model = visual.d_model
        if not -layers <= attention_layer < layers:
            raise ValueError(f"attention_layer {attention_layer} is not a layer of a {layers}-layer decoder")
        self.visual = visual
        self.embedding = WordAndPositionEmbedding(vocab_size, d_model, max_length, dropout, pad_id)
        ffn = ffn_dim or 4 * d_model
        self.forward_decoder = TextualDecoder(self.embedding, layers, heads, ffn, dropout)
        self.backward_decoder = (
            TextualDecoder(self.embedding, layers, heads, ffn, dropout) if bidirectional else None
        )
        self.max_length = max_length
        self.attention_layer = attention_layer
        self.pad_id, self.sos_id, self.eos_id = pad_id, sos_id, eos_id

    def encode(self, images: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Grid tokens BxNxD and the grid size."""
        return self.visual(images)

    def caption_loss(self, images: Tensor, tokens: Tensor) -> dict[str, Tensor]:
        """Cross-entropy of predicting each next token (``[PAD]`` ignored), forwards and backwards.

        Args:
            images: Bx3xHxW in [0, 1].
            tokens: BxL ids ``[SOS] w_1..w_n [EOS] [PAD]...``.

        Returns:
            ``{"forward": loss}`` plus ``"backward"`` when bidirectional.
        """
        memory, _ = self.encode(images)
        logits, _ = self.forward_decoder(tokens[:, :-1], memory)
        losses = {
            "forward": F.cross_entropy(
                logits.flatten(0, 1), tokens[:, 1:].flatten(), ignore_index=self.pad_id
            )
        }
        if self.backward_decoder is not None:
            back = reverse_captions(tokens, self.pad_id)
            logits, _ = self.backward_decoder(back[:, :-1], memory)
            losses["backward"] = F.cross_entropy(
                logits.flatten(0, 1), back[:, 1:].flatten(), ignore_index=self.pad_id
            )
        return losses

    @torch.no_grad()
    def generate(self, memory: Tensor, max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """Greedy decoding with the forward decoder (VirTex uses beam search; greedy gives one caption per
        image, and its attention maps are the ones read).

        Returns:
            ``(tokens BxL, lengths B)``: ids starting with ``[SOS]``, and the words before ``[EOS]``.
        """
        max_length = min(max_length or self.max_length, self.max_length)
        b = memory.shape[0]
        tokens = torch.full((b, 1), self.sos_id, dtype=torch.long, device=memory.device)
        done = torch.zeros(b, dtype=torch.bool, device=memory.device)
        lengths = torch.zeros(b, dtype=torch.long, device=memory.device)
        for _ in range(max_length - 1):
            logits, _ = self.forward_decoder(tokens, memory)
            step = logits[:, -1].float()
            step[:, [self.pad_id, self.sos_id]] = float("-inf")  # never generated
            nxt = step.argmax(dim=-1)
            nxt = torch.where(done, torch.full_like(nxt, self.pad_id), nxt)
            lengths = lengths + (~done & (nxt != self.eos_id)).long()
            done = done | (nxt == self.eos_id)
            tokens = torch.cat([tokens, nxt[:, None]], dim=1)
            if bool(done.all()):
                break
        return tokens, lengths

    def word_attention(
        self, memory: Tensor, grid: tuple[int, int], tokens: Tensor, lengths: Tensor
    ) -> Guidance:
        """The map ``M_j`` of every word of ``tokens`` (teacher-forced pass of the forward decoder).

        Args:
            memory: BxNxD grid tokens.
            grid: ``(gh, gw)`` with ``gh * gw = N``.
            tokens: BxL ids starting with ``[SOS]``.
            lengths: B word counts.

        Returns:
            The :class:`Guidance` (maps from layer ``attention_layer``, averaged over heads).
        """
        t_max = int(lengths.max()) if lengths.numel() else 0
        b = tokens.shape[0]
        gh, gw = grid
        if t_max == 0:
            maps = memory.new_zeros(b, 0, gh, gw)
        else:
            _, weights = self.forward_decoder(tokens[:, :t_max], memory)  # position j-1 emits word j
            maps = weights[self.attention_layer].mean(dim=1).reshape(b, t_max, gh, gw)
        valid = torch.arange(t_max, device=tokens.device)[None] < lengths[:, None]
        maps = maps * valid[..., None, None].to(maps.dtype)
        return Guidance(tokens=tokens, lengths=lengths, maps=maps, valid=valid)

    @torch.no_grad()
    def describe(self, images: Tensor, max_length: int | None = None) -> Guidance:
        """Caption ``images`` greedily and return the words' attention maps."""
        memory, grid = self.encode(images)
        tokens, lengths = self.generate(memory, max_length)
        return self.word_attention(memory, grid, tokens, lengths)


# ---------------------------------------------------------------------------------------------- fusion
def normalize_map(s: Tensor, mode: str = "max") -> Tensor:
    """Normalise each Bx1xhxw map: ``"max"`` divides by its maximum (keeps proportions, the peak becomes 1,
    an all-zero map stays 0); ``"minmax"`` rescales it to [0, 1] (a constant map becomes 0)."""
    flat = s.flatten(1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    if mode == "max":
        return s / hi.clamp_min(_EPS)
    if mode == "minmax":
        lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
        return (s - lo) / (hi - lo).clamp_min(_EPS)
    raise ValueError(f"unknown normalization {mode!r}; expected one of {NORMALIZATIONS}")


def guidance_map(maps: Tensor, valid: Tensor | None, size: Sequence[int], mode: str = "max") -> Tensor:
    """``normalize(sum_j Resize(M_j))`` of eq. 3 as a Bx1xhxw map.

    Args:
        maps: B x T x gh x gw word attention maps.
        valid: B x T bool (words past each caption's end are left out), or ``None`` for all.
        size: ``(h, w)`` of the feature level.
        mode: ``"max"`` or ``"minmax"`` (see :func:`normalize_map`).
    """
    if valid is not None:
        maps = maps * valid[..., None, None].to(maps.dtype)
    if maps.shape[1] == 0:
        return maps.new_zeros(maps.shape[0], 1, *size)
    resized = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return normalize_map(resized.sum(dim=1, keepdim=True), mode)


class GuidanceFusion(nn.Module):
    """Eq. 3 at every selected level: ``F_i' = xi_i(F_i * G_i) + F_i`` with ``G_i`` from :func:`guidance_map`.

    ``xi_i`` is a linear projection (1x1 convolution, ``C_i -> C_i``). It starts at zero (not specified by the
    paper), so that a fused model starts out equal to the PVT-SOD branch it is fine-tuned from.

    Args:
        channels: Channels of each level.
        levels: Indices of the levels to guide (the paper: all four).
        mode: Normalisation of the summed maps (``"max"`` or ``"minmax"``).
        zero_init: Start ``xi`` at zero.
    """

    def __init__(
        self,
        channels: Sequence[int],
        levels: Sequence[int] | None = None,
        mode: str = "max",
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        if mode not in NORMALIZATIONS:
            raise ValueError(f"unknown normalization {mode!r}; expected one of {NORMALIZATIONS}")
        self.levels = tuple(range(len(channels))) if levels is None else tuple(int(i) for i in levels)
        if any(not 0 <= i < len(channels) for i in self.levels):
            raise ValueError(f"guidance levels {self.levels} out of range for {len(channels)} levels")
        self.xi = nn.ModuleList(nn.Conv2d(int(c), int(c), 1) for c in channels)
        if zero_init:
            for conv in self.xi:
                nn.init.zeros_(conv.weight)
                nn.init.zeros_(conv.bias)
        self.mode = mode

    def forward(self, features: Sequence[Tensor], maps: Tensor, valid: Tensor | None = None) -> list[Tensor]:
        """The fused levels (unselected levels pass unchanged)."""
        out = []
        for i, f in enumerate(features):
            if i in self.levels:
                g = guidance_map(maps, valid, f.shape[-2:], self.mode).to(f.dtype)
                f = self.xi[i](f * g) + f
            out.append(f)
        return out


class SDGSODModel(nn.Module):
    """PVT-SOD, the SDG captioner and the multi-scale fusion (Fig. 2).

    Args:
        sod: The :class:`PVTSOD` branch.
        captioner: The :class:`CaptioningModel`.
        levels: Levels to guide.
        mode: Normalisation of the summed word maps.
    """

    def __init__(
        self, sod: PVTSOD, captioner: CaptioningModel, levels: Sequence[int] | None = None, mode: str = "max"
    ) -> None:
        super().__init__()
        self.sod = sod
        self.captioner = captioner
        self.fusion = GuidanceFusion(sod.channels, levels, mode)

    def forward(self, images: Tensor, guidance: Guidance | bool | None = None) -> Tensor:
        """Saliency logits Bx1xHxW; ``guidance=True`` captions the images first, a :class:`Guidance` is used
        as given, ``None``/``False`` runs PVT-SOD alone."""
        features = self.sod.features(images)
        if guidance is True:
            guidance = self.captioner.describe(images)
        if isinstance(guidance, Guidance):
            features = self.fusion(features, guidance.maps, guidance.valid)
        return self.sod.decode(features, images.shape[-2:])
