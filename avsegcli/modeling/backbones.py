"""Visual backbones returning four maps at strides 4, 8, 16, 32."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn


class ResNet50Backbone(nn.Module):
    """torchvision's ``resnet50`` trunk (no pooling, no classifier); outputs 256/512/1024/2048 channels."""

    out_channels: tuple[int, ...] = (256, 512, 1024, 2048)

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50  # lazy: torchvision only for ResNet-50 presets

        trunk = resnet50(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x``: ``[N, 3, H, W]`` -> ``[N, 256, H/4, W/4]``, ``[N, 512, H/8, W/8]``, ``[N, 1024, H/16, W/16]``,
        ``[N, 2048, H/32, W/32]``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        return [c1, c2, c3, self.layer4(c3)]


class PVTv2Backbone(nn.Module):
    """Pyramid Vision Transformer v2 (timm's implementation; B5 = depths 3/6/40/3, dims 64/128/320/512)."""

    def __init__(
        self,
        *,
        embed_dims: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        mlp_ratios: Sequence[float],
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        drop_path_rate: float = 0.1,
    ) -> None:
        super().__init__()
        from timm.models.pvt_v2 import PyramidVisionTransformerV2  # lazy: timm (heavy) only for PVTv2 presets

        net = PyramidVisionTransformerV2(
            depths=tuple(depths),
            embed_dims=tuple(embed_dims),
            num_heads=tuple(num_heads),
            mlp_ratios=tuple(mlp_ratios),
            sr_ratios=tuple(sr_ratios),
            qkv_bias=True,
            drop_path_rate=drop_path_rate,
        )
        self.out_channels = tuple(embed_dims)
        self.patch_embed = net.patch_embed
        self.stages = net.stages

    def forward(self, x: Tensor) -> list[Tensor]:
        """``x``: ``[N, 3, H, W]`` -> four maps ``[N, embed_dims[i], H/s, W/s]`` for s = 4, 8, 16, 32."""
        x = self.patch_embed(x)  # [N, H/4, W/4, C0]
        feats = []
        for stage in self.stages:
            x = stage(x)  # [N, C_i, h, w]
            feats.append(x)
        return feats
