"""AVSegFormer: backbone + VGGish + audio projection + head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsegcli.modeling.cache import clear_caches
from avsegcli.modeling.head import AVSegHead
from avsegcli.modeling.impl import use_impl
from avsegcli.modeling.vggish import VGGish


def _clear_after_load(module: nn.Module, _incompatible_keys) -> None:
    clear_caches(module)


def _island_in(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a float32 island: floating inputs cast up to float32."""
    return tuple(a.float() if isinstance(a, Tensor) and a.is_floating_point() else a for a in args)


def _island_out(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
    """Forward hook of a float32 island: the output back in the model's working dtype."""
    return output.to(module.__dict__["island_dtype"])


class AVSegFormer(nn.Module):
    """The whole model. ``config`` (the preset dict it was built from) travels with it into checkpoints.

    Execution (no effect on the weights or the state dict): :meth:`set_impl` picks the reference arithmetic or
    the fast path; :meth:`cast_for_inference` stores the weights once in a reduced working dtype.
    """

    impl: str = "reference"

    def __init__(self, *, backbone: nn.Module, vggish: VGGish, head: AVSegHead, audio_dim: int, dim: int, config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.vggish = vggish
        self.head = head
        self.audio_proj = nn.Linear(audio_dim, dim)
        self.config = dict(config or {})
        self.register_load_state_dict_post_hook(_clear_after_load)

    @property
    def num_classes(self) -> int:
        return self.head.fc[-1].out_channels

    @property
    def working_dtype(self) -> torch.dtype:
        """The dtype of the visual path's weights: float32, or what :meth:`cast_for_inference` set."""
        return self.head.level_embed.dtype

    def set_impl(self, impl: str) -> AVSegFormer:
        """``"reference"``: the released arithmetic, op for op (contiguous NCHW). ``"fast"``: the same function
        with fewer FLOPs and copies: channels_last convolutions, the query product folded into the first
        query-MLP layer and that MLP run as pixel GEMMs (:meth:`QueryMLP.forward_folded`); equal within float
        rounding (tests: logits within 1e-4). The only switch: it binds every module's ``*_fast`` methods in
        place of the reference ones, or unbinds them (:func:`~avsegcli.modeling.impl.use_impl`)."""
        use_impl(self, impl)
        self.impl = impl
        self.clear_caches()
        return self.to(memory_format=torch.channels_last if impl == "fast" else torch.contiguous_format)

    def cast_for_inference(self, dtype: torch.dtype) -> AVSegFormer:
        """Store the weights once in ``dtype`` (bf16/fp16) for inference, the same on every device (no autocast).

        Float32 islands: VGGish and the audio projection (run once per audio second), the last 1x1 convolutions
        that produce the logits, and the norms (LayerNorm, GroupNorm), which keep float32 weights and compute in
        float32 on their input cast up, returning the working dtype (:func:`_island_in` / :func:`_island_out`:
        every kernel sees one dtype, as CUDA's require); the deformable attention computes its sampling
        locations and samples in float32 on its own. Batch norms are cast with the rest."""
        if dtype == torch.float32:
            raise ValueError("cast_for_inference takes a reduced dtype (bfloat16 or float16)")
        norms = [m for m in self.modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm))]
        keep = [self.vggish, self.audio_proj, self.head.fc[-1], self.head.attn_fc[-1], *norms]
        kept = {id(t) for m in keep for t in [*m.parameters(), *m.buffers()]}
        for t in [*self.parameters(), *self.buffers()]:  # buffers: batch-norm statistics
            if id(t) not in kept and t.is_floating_point():
                t.data = t.data.to(dtype)
        for m in norms:
            if "island_dtype" not in m.__dict__:
                m.register_forward_pre_hook(_island_in)
                m.register_forward_hook(_island_out)
            m.__dict__["island_dtype"] = dtype
        self.clear_caches()
        return self

    def clear_caches(self) -> AVSegFormer:
        """Forget what the fast path derived from the weights (:mod:`avsegcli.modeling.cache`); called whenever
        the weights may change under the caches (loading a state dict, casting, moving, switching impl)."""
        clear_caches(self)
        return self

    def _apply(self, fn, recurse=True):  # .to(), .cuda(), .half(), ...: the cached tensors would be stale
        clear_caches(self)
        return super()._apply(fn, recurse)

    def embed_audio(self, log_mel: Tensor) -> Tensor:
        """``log_mel``: ``[N, 1, 96, 64]`` -> VGGish embedding ``[N, 128]``. Run it once per audio chunk."""
        return self.vggish(log_mel)

    def forward(
        self,
        frames: Tensor,
        log_mel: Tensor | None = None,
        *,
        audio_embedding: Tensor | None = None,
        frame_valid: Tensor | None = None,
        return_intermediate: bool = False,
    ) -> dict[str, Any]:
        """
        Args:
            frames: ``[N, 3, H, W]`` ImageNet-normalised RGB.
            log_mel: ``[N, 1, 96, 64]`` the log-mel patch of each frame's second, or None when
                ``audio_embedding`` ``[N, 128]`` (from :meth:`embed_audio`) is given instead.
            frame_valid: optional ``[N]`` 0/1 flags; features and outputs of invalid (padding) frames are zeroed,
                as the released AVSS model does.
            return_intermediate: add ``intermediate_masks``, one ``[N, K, H, W]`` per decoder layer.

        Returns a dict: ``pred_masks`` ``[N, K, H, W]`` logits, ``mask_feature`` ``[N, 256, H/4, W/4]``,
        ``queries`` ``[N, Q, 256]``, and ``intermediate_masks`` on request.
        """
        if audio_embedding is None:
            if log_mel is None:
                raise ValueError("give log_mel or audio_embedding")
            audio_embedding = self.embed_audio(log_mel)
        dtype = self.working_dtype
        audio = self.audio_proj(audio_embedding[:, None, :].float()).to(dtype)  # [N, 1, dim]
        size = frames.shape[-2:]
        feats = self.backbone(frames.to(dtype))
        flag = None if frame_valid is None else frame_valid.to(feats[0].dtype).view(-1, 1, 1, 1)
        if flag is not None:
            feats = [f * flag for f in feats]
        out = self.head(feats, audio, return_intermediate=return_intermediate)
        if out["pred_masks"].shape[-2:] != size:
            out["pred_masks"] = F.interpolate(out["pred_masks"], size=size, mode="bilinear", align_corners=False)
            if return_intermediate:
                out["intermediate_masks"] = [F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in out["intermediate_masks"]]
        if flag is not None:
            flag = flag.float()
            out["pred_masks"] = out["pred_masks"] * flag
            out["mask_feature"] = out["mask_feature"] * flag
            if return_intermediate:
                out["intermediate_masks"] = [m * flag for m in out["intermediate_masks"]]
        return out

    def forward_fast(self, frames: Tensor, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """:meth:`forward` (same arguments and outputs) on the frames in channels_last memory, the layout of the
        fast path's weights; the modules below run their own fast variants."""
        # the class's forward: on a fast model, the instance's `forward` is this method (avsegcli.modeling.impl)
        return AVSegFormer.forward(self, frames.contiguous(memory_format=torch.channels_last), *args, **kwargs)
