"""nn.Modules of AVSegFormer, built from typed keyword-only arguments with sub-modules passed in."""

from avsegcli.modeling.avsegformer import AVSegFormer
from avsegcli.modeling.backbones import PVTv2Backbone, ResNet50Backbone
from avsegcli.modeling.head import AVSegHead
from avsegcli.modeling.vggish import VGGish

__all__ = ["AVSegFormer", "AVSegHead", "PVTv2Backbone", "ResNet50Backbone", "VGGish"]
