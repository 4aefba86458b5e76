"""Our head loads the authors' reduced head (random weights) and reproduces its outputs."""

from __future__ import annotations

import torch

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
    with torch.no_grad():
        audio = audio_proj(ref["vggish_embedding"].float()[:, None, :])
        out = head(feats, audio, return_intermediate=True)

    assert out["pred_masks"].shape == ref["pred"].shape == (2, 71, 128, 128)
    pred_err = (out["pred_masks"] - ref["pred"]).abs().max().item()
    feat_err = (out["mask_feature"] - ref["mask_feature"]).abs().max().item()
    print(f"max abs diff: pred {pred_err:.2e}, mask_feature {feat_err:.2e}")
    assert pred_err < 1e-4
    assert feat_err < 1e-4
    # the intermediate path runs on the same weights and gives full-resolution logits per decoder layer
    assert [m.shape for m in out["intermediate_masks"]] == [(2, 71, 128, 128)]
    assert torch.isfinite(out["intermediate_masks"][0]).all()
