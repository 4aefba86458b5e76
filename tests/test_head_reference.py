"""Our head loads the authors' reduced head (random weights) and reproduces its outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from avsegcli.build import build_head


def test_reduced_head_matches_authors_outputs(reference_dir):
    ref = torch.load(reference_dir / "head_reference.pt", weights_only=False)
    cfg = ref["config"]
    enc, dec, gen = cfg["transformer"]["encoder"], cfg["transformer"]["decoder"], cfg["query_generator"]
    head = build_head(
        {
            "dim": 256, "num_classes": cfg["num_classes"], "num_queries": cfg["query_num"],
            "query_layers": gen["num_layers"], "query_ffn_dim": 1024,
            "encoder_layers": enc["num_layers"], "decoder_layers": dec["num_layers"],
            "ffn_dim": enc["layer"]["ffn_dim"], "mlp_dim": 2048, "num_heads": 8, "num_points": 4, "dropout": 0.1,
        },
        tuple(cfg["in_channels"]),
    ).eval()
    state = {k: v.float() for k, v in ref["state_dict"].items()}
    head.load_state_dict({k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}, strict=True)
    audio_proj = torch.nn.Linear(128, 256)
    audio_proj.load_state_dict({"weight": state["audio_proj.weight"], "bias": state["audio_proj.bias"]})

    feats = [f.float() for f in ref["features"]]
    seen = {}
    layer = head.transformer.decoder.layers[0]
    layer.cross_attn.register_forward_pre_hook(lambda mod, args: seen.update(cross_in=args[:2]))  # returns None
    head.transformer.decoder.register_forward_hook(lambda mod, args, res: seen.update(queries=res[0][0]))
    with torch.no_grad():
        audio = audio_proj(ref["vggish_embedding"].float()[:, None, :])
        out = head(feats, audio, return_intermediate=True)

    assert out["pred_masks"].shape == ref["pred"].shape == (2, 71, 128, 128)
    pred_err = (out["pred_masks"] - ref["pred"]).abs().max().item()
    feat_err = (out["mask_feature"] - ref["mask_feature"]).abs().max().item()
    print(f"max abs diff: pred {pred_err:.2e}, mask_feature {feat_err:.2e}")
    assert pred_err < 1e-5  # measured 1.9e-6 here (float32; README: 3.1e-6), float-rounding order only
    assert feat_err < 1e-5  # measured 1.7e-6 (README: 5.7e-6)
    # the intermediate path (no authors' reference: their code left it commented out) against the paper's
    # definition written out with the file's own weights: the decoder layer's cross-attention map averaged over
    # heads, queries weighted by it, split into the 3 levels, FPN (up, conv, add stride 16, up, conv, add stride 8,
    # up, conv), then the output convolutions of attn_fc
    assert [m.shape for m in out["intermediate_masks"]] == [(2, 71, 128, 128)]
    w = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    q_in, memory = seen["cross_in"]
    heads, dim = 8, q_in.shape[-1]
    wq, wk = w["transformer.decoder.layers.0.cross_attn.in_proj_weight"].split(dim)[:2]
    bq, bk = w["transformer.decoder.layers.0.cross_attn.in_proj_bias"].split(dim)[:2]
    qh = (q_in @ wq.T + bq).unflatten(-1, (heads, dim // heads)).transpose(1, 2)  # [N, h, Q, d]
    kh = (memory @ wk.T + bk).unflatten(-1, (heads, dim // heads)).transpose(1, 2)  # [N, h, S, d]
    attn = torch.softmax(qh @ kh.transpose(-1, -2) / (dim // heads) ** 0.5, -1).mean(1)  # [N, Q, S]
    maps = (seen["queries"][:, :, :, None] * attn[:, :, None, :]).sum(1)  # [N, C, S]
    sizes = [(f.shape[2], f.shape[3]) for f in feats[1:]]  # strides 8, 16, 32
    parts = maps.split([h * wd for h, wd in sizes], dim=2)
    lv = [p.reshape(2, dim, h, wd) for p, (h, wd) in zip(parts, sizes)]

    def up_conv(x, name):
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return F.conv2d(x, w[f"fpn.{name}.1.weight"], w[f"fpn.{name}.1.bias"], padding=1)

    x = up_conv(up_conv(up_conv(lv[2], "up1") + lv[1], "up2") + lv[0], "up3")  # [N, C, 32, 32]
    x = F.conv2d(x, w["attn_fc.0.weight"], w["attn_fc.0.bias"], padding=1)
    x = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
    x = F.relu(F.conv2d(x, w["attn_fc.2.weight"], w["attn_fc.2.bias"], padding=1))
    want = F.conv2d(x, w["attn_fc.4.weight"])
    inter_err = (out["intermediate_masks"][0] - want).abs().max().item()
    scale = want.abs().max().item()
    print(f"intermediate mask vs written-out definition: max abs diff {inter_err:.2e} (values up to {scale:.2f})")
    assert inter_err < 2e-6  # measured 2.1e-7
