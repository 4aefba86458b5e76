"""Presets (plain dicts of literal numbers) and ``build_model``, which turns one into an ``AVSegFormer``."""

from __future__ import annotations

import copy
from typing import Any, Callable

from avsegcli.modeling import AVSegFormer, AVSegHead, PVTv2Backbone, ResNet50Backbone, VGGish
from avsegcli.modeling.mixer import CrossModalMixer
from avsegcli.modeling.position import SinePositionalEncoding
from avsegcli.modeling.query_generator import AudioQueryGenerator, QueryGeneratorLayer
from avsegcli.modeling.transformer import Decoder, DecoderLayer, Encoder, EncoderLayer, Transformer
from avsegcli.tasks import AVSS, MS3, S4, Task

Config = dict[str, Any]


def _resnet50() -> Config:
    return {"kind": "resnet50"}


def _pvt_v2_b5() -> Config:
    return {"kind": "pvt_v2", "embed_dims": [64, 128, 320, 512], "depths": [3, 6, 40, 3], "num_heads": [1, 2, 5, 8],
            "mlp_ratios": [4, 4, 4, 4], "sr_ratios": [8, 4, 2, 1], "drop_path_rate": 0.1}


def _vggish() -> Config:
    return {"channels": [64, 128, 256, 512], "hidden_dim": 4096, "embed_dim": 128}


def _released_head(num_classes: int) -> Config:
    return {"dim": 256, "num_classes": num_classes, "num_queries": 300, "query_layers": 6, "query_ffn_dim": 1024,
            "encoder_layers": 6, "decoder_layers": 6, "ffn_dim": 2048, "mlp_dim": 2048, "num_heads": 8,
            "num_points": 4, "dropout": 0.1}


def _released(name: str, task: Task, backbone: Config) -> Config:
    return {
        "name": name,
        "task": task.name,
        "frames_per_clip": task.frames_per_clip,
        # The released S4/MS3 models saw frames resized source -> 224 (benchmark PNGs) -> 512; AVSS ones 224.
        "image_size": task.image_size,
        "frame_resize_via": None if task.semantic else 224,
        "backbone": backbone,
        "vggish": _vggish(),
        "head": _released_head(task.num_classes),
    }


def s4_r50() -> Config:
    return _released("s4-r50", S4, _resnet50())


def s4_pvt2() -> Config:
    return _released("s4-pvt2", S4, _pvt_v2_b5())


def ms3_r50() -> Config:
    return _released("ms3-r50", MS3, _resnet50())


def ms3_pvt2() -> Config:
    return _released("ms3-pvt2", MS3, _pvt_v2_b5())


def avss_r50() -> Config:
    return _released("avss-r50", AVSS, _resnet50())


def avss_pvt2() -> Config:
    return _released("avss-pvt2", AVSS, _pvt_v2_b5())


def tiny() -> Config:
    """A few hundred thousand values: for tests and CPU smoke runs."""
    return {
        "name": "tiny",
        "task": "s4",
        "frames_per_clip": 5,
        "image_size": 64,
        "frame_resize_via": None,
        "backbone": {"kind": "pvt_v2", "embed_dims": [16, 32, 32, 64], "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2],
                     "mlp_ratios": [2, 2, 2, 2], "sr_ratios": [8, 4, 2, 1], "drop_path_rate": 0.0},
        "vggish": {"channels": [8, 8, 16, 16], "hidden_dim": 32, "embed_dim": 32},
        "head": {"dim": 32, "num_classes": 1, "num_queries": 8, "query_layers": 1, "query_ffn_dim": 64,
                 "encoder_layers": 1, "decoder_layers": 2, "ffn_dim": 64, "mlp_dim": 32, "num_heads": 4,
                 "num_points": 2, "dropout": 0.0},
    }


def synth() -> Config:
    """The bundled default's size: a PVTv2-B0-like trunk and a small head, trainable on a CPU (about 5 M values)."""
    return {
        "name": "synth",
        "task": "s4",
        "frames_per_clip": 5,
        "image_size": 96,
        "frame_resize_via": None,
        "backbone": {"kind": "pvt_v2", "embed_dims": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "num_heads": [1, 2, 5, 8],
                     "mlp_ratios": [8, 8, 4, 4], "sr_ratios": [8, 4, 2, 1], "drop_path_rate": 0.0},
        "vggish": {"channels": [16, 32, 64, 64], "hidden_dim": 256, "embed_dim": 128},
        "head": {"dim": 128, "num_classes": 1, "num_queries": 32, "query_layers": 2, "query_ffn_dim": 256,
                 "encoder_layers": 2, "decoder_layers": 3, "ffn_dim": 256, "mlp_dim": 256, "num_heads": 8,
                 "num_points": 4, "dropout": 0.0, "mask_widths": [32, 16]},
    }


PRESETS: dict[str, Callable[[], Config]] = {
    "s4-r50": s4_r50,
    "s4-pvt2": s4_pvt2,
    "ms3-r50": ms3_r50,
    "ms3-pvt2": ms3_pvt2,
    "avss-r50": avss_r50,
    "avss-pvt2": avss_pvt2,
    "tiny": tiny,
    "synth": synth,
}


def preset(name: str, **overrides: Any) -> Config:
    """The preset's config dict; ``overrides`` replace top-level keys or, given a dict, merge into a section."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def _backbone(cfg: Config):
    kind = cfg["kind"]
    if kind == "resnet50":
        return ResNet50Backbone()
    if kind == "pvt_v2":
        return PVTv2Backbone(embed_dims=cfg["embed_dims"], depths=cfg["depths"], num_heads=cfg["num_heads"],
                             mlp_ratios=cfg["mlp_ratios"], sr_ratios=cfg["sr_ratios"], drop_path_rate=cfg["drop_path_rate"])
    raise ValueError(f"unknown backbone kind {kind!r}")


def build_head(cfg: Config, in_channels: tuple[int, ...]) -> AVSegHead:
    dim, heads = cfg["dim"], cfg["num_heads"]
    levels = len(in_channels) - 1
    encoder = Encoder(layers=[
        EncoderLayer(dim=dim, ffn_dim=cfg["ffn_dim"], num_levels=levels, num_heads=heads, num_points=cfg["num_points"], dropout=cfg["dropout"])
        for _ in range(cfg["encoder_layers"])
    ])
    decoder = Decoder(layers=[
        DecoderLayer(dim=dim, ffn_dim=cfg["ffn_dim"], num_heads=heads, dropout=cfg["dropout"]) for _ in range(cfg["decoder_layers"])
    ])
    generator = AudioQueryGenerator(
        num_queries=cfg["num_queries"], dim=dim,
        layers=[QueryGeneratorLayer(dim=dim, num_heads=heads, ffn_dim=cfg["query_ffn_dim"]) for _ in range(cfg["query_layers"])],
    )
    return AVSegHead(
        in_channels=in_channels,
        num_classes=cfg["num_classes"],
        num_queries=cfg["num_queries"],
        dim=dim,
        mlp_dim=cfg["mlp_dim"],
        transformer=Transformer(encoder=encoder, decoder=decoder),
        query_generator=generator,
        mixer=CrossModalMixer(dim=dim, num_heads=heads),
        positional_encoding=SinePositionalEncoding(num_feats=dim // 2),
        mask_widths=tuple(cfg.get("mask_widths", (128, 32))),
    )


def build_model(config: str | Config) -> AVSegFormer:
    """Build a model with random weights from a preset name or a config dict (as stored in checkpoints)."""
    cfg = preset(config) if isinstance(config, str) else copy.deepcopy(config)
    backbone = _backbone(cfg["backbone"])
    vggish = VGGish(channels=cfg["vggish"]["channels"], hidden_dim=cfg["vggish"]["hidden_dim"], embed_dim=cfg["vggish"]["embed_dim"])
    head = build_head(cfg["head"], tuple(backbone.out_channels))
    model = AVSegFormer(backbone=backbone, vggish=vggish, head=head, audio_dim=cfg["vggish"]["embed_dim"], dim=cfg["head"]["dim"], config=cfg)
    for p in model.vggish.parameters():  # VGGish is frozen, as released
        p.requires_grad_(False)
    return model.eval()
