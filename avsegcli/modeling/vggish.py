"""VGGish: a VGG-like network from a 96x64 log-mel patch to a 128-d embedding (the released layout)."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

NUM_FRAMES = 96  # log-mel frames per patch (0.96 s)
NUM_BANDS = 64  # mel bands


class VGGish(nn.Module):
    """``features``: conv3x3+ReLU blocks with 2x2 max-pools; ``embeddings``: three linear layers with ReLU.

    The released VGGish has ``channels=(64, 128, 256, 512)`` and ``hidden_dim=4096``; smaller values give a
    reduced network with the same layout for tests.
    """

    def __init__(self, *, channels: Sequence[int] = (64, 128, 256, 512), hidden_dim: int = 4096, embed_dim: int = 128) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        plan: list[int | str] = [c1, "M", c2, "M", c3, c3, "M", c4, c4, "M"]
        layers: list[nn.Module] = []
        cin = 1
        for v in plan:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(cin, int(v), kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                cin = int(v)
        self.features = nn.Sequential(*layers)
        flat = c4 * (NUM_FRAMES // 16) * (NUM_BANDS // 16)
        self.embeddings = nn.Sequential(
            nn.Linear(flat, hidden_dim),
            nn.ReLU(True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(True),
            nn.Linear(hidden_dim, embed_dim),
            nn.ReLU(True),
        )

    def forward(self, log_mel: Tensor) -> Tensor:
        """``log_mel``: ``[N, 1, 96, 64]`` -> ``[N, embed_dim]``."""
        x = self.features(log_mel)  # [N, C, 6, 4]
        # flatten in (time, band, channel) order, as the TensorFlow original
        return self.embeddings(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))
