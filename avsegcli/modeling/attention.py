"""Multi-head attention: ``nn.MultiheadAttention`` (the reference) and its fast variant, in one module.

``nn.MultiheadAttention`` transposes batch-first inputs to ``[L, N, C]`` before its input projection. On the CPU,
a projection without bias (the audio query generator's) on that non-contiguous layout is computed as a batched
matmul over a weight copied once per query (about 0.4 s per frame of the released model in bfloat16). Projecting
the contiguous ``[N, L, C]`` input gives the same function with plain GEMMs (:func:`multihead_attention`).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def multihead_attention(attn: nn.MultiheadAttention, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """``attn(query, key, value, need_weights=False)[0]`` in eval mode, for a batch-first module with packed
    input projections (``embed_dim == kdim == vdim``).

    Args:
        query: ``[N, Lq, C]``; key, value: ``[N, Lk, C]``.
    Returns ``[N, Lq, C]`` (with a single key, ``Lk == 1`` as for the audio feature, an expanded view: every query
    attends to that key alone).
    """
    n, lq, c = query.shape
    h = attn.num_heads
    w, b = attn.in_proj_weight, attn.in_proj_bias
    if key.shape[1] == 1:  # one key: its softmax weight is exactly 1, so every query gets the projected value
        wv, bv = w[2 * c:], None if b is None else b[2 * c:]
        return attn.out_proj(F.linear(value, wv, bv)).expand(n, lq, c)
    if query is key and key is value:
        q, k, v = F.linear(query, w, b).chunk(3, dim=-1)
    else:
        wq, wk, wv = w.chunk(3)
        bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
        q, k, v = F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)
    q, k, v = (t.reshape(n, -1, h, c // h).transpose(1, 2) for t in (q, k, v))  # [N, h, L, C/h]
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.dropout if attn.training else 0.0)
    return attn.out_proj(out.transpose(1, 2).reshape(n, lq, c))


class Attention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` (batch-first; same parameters and state-dict names) whose ``forward`` is the
    reference; :meth:`forward_fast` is the fast path's (:mod:`avsegcli.modeling.impl`)."""

    def forward_fast(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                     need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                     is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """``forward`` with the same arguments (``query``: ``[N, Lq, C]``; key, value: ``[N, Lk, C]``): returns
        ``([N, Lq, C], None)`` through :func:`multihead_attention` in eval mode when no weights or masks are
        asked for; otherwise (training: dropout; attention maps) the reference ``forward``."""
        if need_weights or self.training or key_padding_mask is not None or attn_mask is not None or is_causal \
                or not self._qkv_same_embed_dim or not self.batch_first:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        return multihead_attention(self, query, key, value), None
