"""Audio queries: learnable embeddings that self-attend, then cross-attend to the audio feature."""

from __future__ import annotations

from torch import Tensor, nn

from avsegcli.modeling.attention import Attention


class QueryGeneratorLayer(nn.Module):
    def __init__(self, *, dim: int, num_heads: int, ffn_dim: int) -> None:
        super().__init__()
        self.self_attn = Attention(dim, num_heads, bias=False, batch_first=True)
        self.cross_attn = Attention(dim, num_heads, bias=False, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, query: Tensor, audio: Tensor) -> Tensor:
        """``query``: ``[N, Q, C]``, ``audio``: ``[N, 1, C]``. Returns ``[N, Q, C]``."""
        query = self.norm1(query + self.self_attn(query, query, query, need_weights=False)[0])
        query = self.norm2(query + self.cross_attn(query, audio, audio, need_weights=False)[0])
        return self.norm3(query + self.ffn(query))


class AudioQueryGenerator(nn.Module):
    def __init__(self, *, num_queries: int, dim: int, layers: list[QueryGeneratorLayer]) -> None:
        super().__init__()
        self.query = nn.Embedding(num_queries, dim)
        self.layers = nn.ModuleList(layers)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, audio: Tensor) -> Tensor:
        """``audio``: ``[N, 1, C]`` projected audio feature. Returns the audio queries ``[N, Q, C]``."""
        query = self.query.weight[None].expand(audio.shape[0], -1, -1)
        for layer in self.layers:
            query = layer(query, audio)
        return query
