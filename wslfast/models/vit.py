"""Vision Transformers (Dosovitskiy et al. 2021), SWAG's ViT-B/16, L/16, H/14, on torchvision's own code.

The model IS torchvision's `VisionTransformer` (keys conv_proj.*, class_token, encoder.pos_embedding,
encoder.layers.encoder_layer_i.{ln_1, self_attention.{in_proj_weight, in_proj_bias, out_proj.*}, ln_2,
mlp.{0,3}.*}, encoder.ln.*, heads.head.*), so torchvision's checkpoints, SWAG's included
(`ViT_H_14_Weights.IMAGENET1K_SWAG_E2E_V1`, ...), load unchanged. One change: each block's
nn.MultiheadAttention is replaced by `SDPAttention`, which holds the same parameters under the same names
and runs F.scaled_dot_product_attention (flash / memory-efficient kernels on GPU).

A checkpoint made at another image size loads too: its position embeddings are resized to this model's
patch grid on load (torchvision's interpolate_embeddings: bicubic over the grid, class token kept), which
is how SWAG fine-tunes at 384-518 px from 224 px pretraining.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

__all__ = ["ViT", "SDPAttention", "VIT_PARAMS"]

# (patch, layers, heads, hidden, mlp): Dosovitskiy et al. 2021, Table 1 (H/14 as SWAG and torchvision).
VIT_PARAMS = {
    "vit_b_16": dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072),
    "vit_l_16": dict(patch_size=16, num_layers=24, num_heads=16, hidden_dim=1024, mlp_dim=4096),
    "vit_h_14": dict(patch_size=14, num_layers=32, num_heads=16, hidden_dim=1280, mlp_dim=5120),
    # 2 blocks, 2 heads of 16, 8-px patches: for tests and the CPU demo (16 patches at 32 px, 64 at 64 px).
    "vit_tiny": dict(patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64),
}


class SDPAttention(nn.Module):
    """Self-attention with nn.MultiheadAttention's parameters (in_proj_weight [3D, D], in_proj_bias [3D],
    out_proj) and its call signature (query, key, value, need_weights=False) -> (out, None), computed with
    F.scaled_dot_product_attention. Self-attention only (query is key is value), batch-first."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha.batch_first or not mha._qkv_same_embed_dim or mha.in_proj_bias is None:
            raise ValueError("SDPAttention: needs a batch-first nn.MultiheadAttention with packed q/k/v and bias")
        self.embed_dim, self.num_heads, self.dropout = mha.embed_dim, mha.num_heads, mha.dropout
        self.in_proj_weight = mha.in_proj_weight  # the same Parameters: torchvision's init, torchvision's keys
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj

    def forward(self, query: Tensor, key: Tensor | None = None, value: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("SDPAttention: self-attention only (key and value must be the query)")
        if need_weights:
            raise ValueError("SDPAttention: need_weights=True is not supported (SDPA returns no weights)")
        b, n, d = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d)), None

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}"


class ViT(VisionTransformer):
    """torchvision's VisionTransformer with SDPA attention, forward_features, `fc` (the linear head, for the
    hashtag objective) and position embeddings resized on load."""

    def __init__(self, patch_size: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int,
                 num_classes: int = 1000, image_size: int = 224, dropout: float = 0.0,
                 attention_dropout: float = 0.0):
        if num_classes < 1:
            raise ValueError(f"ViT: num_classes must be >= 1, got {num_classes}")
        if image_size < patch_size or image_size % patch_size:
            raise ValueError(f"ViT: image_size must be a multiple of the patch size {patch_size}, got {image_size}")
        super().__init__(image_size=image_size, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
                         hidden_dim=hidden_dim, mlp_dim=mlp_dim, dropout=dropout,
                         attention_dropout=attention_dropout, num_classes=num_classes)
        for block in self.encoder.layers:
            block.self_attention = SDPAttention(block.self_attention)
        self.num_features = hidden_dim
        self.register_load_state_dict_pre_hook(_resize_pos_embedding)

    @property
    def fc(self) -> nn.Linear:
        """The linear classifier (heads.head), under the name the hashtag objective and ResNeXt/RegNet use.
        A property, so the state_dict keeps torchvision's `heads.head.*` only."""
        return self.heads.head

    def forward_features(self, x: Tensor) -> Tensor:
        """Images [B, 3, S, S] (S = image_size) -> the class token's final embedding [B, hidden_dim]."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != self.image_size or x.shape[3] != self.image_size:
            raise ValueError(f"ViT: expected images [B, 3, {self.image_size}, {self.image_size}], got shape "
                             f"{tuple(x.shape)} (build the model with image_size= to change it)")
        x = self._process_input(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder(x)[:, 0]

    def forward(self, x: Tensor) -> Tensor:
        return self.heads(self.forward_features(x))


def _resize_pos_embedding(self: "ViT", state_dict, prefix, *args) -> None:
    """load_state_dict pre-hook: a checkpoint's position embeddings resized to this model's patch grid."""
    key = prefix + "encoder.pos_embedding"
    pos = state_dict.get(key)
    if pos is None or pos.shape == self.encoder.pos_embedding.shape:
        return
    n_patches = pos.shape[1] - 1 if pos.dim() == 3 else -1
    side = math.isqrt(max(n_patches, 0))
    if pos.dim() != 3 or pos.shape[0] != 1 or n_patches < 1 or side * side != n_patches \
            or pos.shape[2] != self.hidden_dim:
        raise ValueError(f"ViT: {key} of shape {tuple(pos.shape)} is no square grid (+ class token) of "
                         f"width {self.hidden_dim}")
    # torchvision's resize: bicubic over the grid (align_corners), the class token's embedding kept.
    resized = interpolate_embeddings(self.image_size, self.patch_size,
                                     {"encoder.pos_embedding": pos.float()})["encoder.pos_embedding"]
    state_dict[key] = resized.to(pos.dtype)
