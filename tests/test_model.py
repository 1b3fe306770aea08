import dataclasses

import pytest
import torch

from lewm_agent.model import PRESETS, LeWM, SIGReg, preset_config


def test_paper_preset_has_the_official_parameter_count():
    assert LeWM.from_preset("paper", action_dim=2, action_block=5).num_parameters() == 18_034_478
    assert LeWM.from_preset("paper", action_dim=5, action_block=5).num_parameters() == 18_034_628


@pytest.mark.parametrize("name", ["small", "tiny"])
def test_shapes(name):
    torch.manual_seed(0)
    model = LeWM.from_preset(name, action_dim=2)
    c = model.config
    pixels = torch.randint(0, 256, (4, c.history + 1, 3, c.image_size, c.image_size), dtype=torch.uint8)
    actions = torch.randn(4, c.history + 1, c.action_block_dim)
    emb = model.encode(pixels)
    assert emb.shape == (4, c.history + 1, c.embed_dim)
    assert model.predict(emb[:, :3], actions[:, :3]).shape == (4, 3, c.embed_dim)
    losses = model.loss({"pixels": pixels, "action": actions})
    assert set(losses) == {"loss", "pred_loss", "sigreg_loss", "straightness"}
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.encoder.parameters())
    model.eval()
    rolled = model.rollout(emb[:, :2], actions[:, :1], torch.randn(4, 7, 5, c.action_block_dim))
    assert rolled.shape == (4, 7, 5, c.embed_dim)


def test_predictor_is_causal():
    torch.manual_seed(0)
    model = LeWM.from_preset("tiny", action_dim=2).eval()
    for block in model.predictor.blocks:  # AdaLN-zero starts as identity; make the blocks do something
        torch.nn.init.normal_(block.adaLN_modulation[1].weight, std=0.1)
    emb, act = torch.randn(2, 3, 64), torch.randn(2, 3, 10)
    out = model.predict(emb, act)
    emb2, act2 = emb.clone(), act.clone()
    emb2[:, 2] += 1.0
    act2[:, 2] += 1.0
    out2 = model.predict(emb2, act2)
    assert torch.allclose(out[:, :2], out2[:, :2], atol=1e-6)
    assert not torch.allclose(out[:, 2], out2[:, 2])


def test_rollout_matches_step_by_step_prediction():
    torch.manual_seed(0)
    model = LeWM.from_preset("tiny", action_dim=2).eval()
    for block in model.predictor.blocks:
        torch.nn.init.normal_(block.adaLN_modulation[1].weight, std=0.1)
    emb, hist_act = torch.randn(1, 3, 64), torch.randn(1, 2, 10)
    plan = torch.randn(1, 1, 4, 10)
    rolled = model.rollout(emb, hist_act, plan)[0, 0]
    ctx, acts = emb, torch.cat([hist_act, plan[:, 0, :1]], 1)
    with torch.no_grad():
        for k in range(4):
            nxt = model.predict(ctx[:, -3:], acts[:, -3:])[:, -1:]
            assert torch.allclose(nxt[0, 0], rolled[k], atol=1e-5)
            ctx = torch.cat([ctx, nxt], 1)
            if k < 3:
                acts = torch.cat([acts, plan[:, 0, k + 1 : k + 2]], 1)


def test_presets_are_overridable_dataclasses_and_bad_names_fail():
    cfg = preset_config("tiny", action_dim=3, embed_dim=32)
    assert dataclasses.is_dataclass(cfg) and cfg.embed_dim == 32 and cfg.action_dim == 3
    assert set(PRESETS) >= {"paper", "small", "tiny"}
    with pytest.raises(ValueError, match="unknown preset 'huge'.*paper"):
        preset_config("huge", action_dim=2)
    with pytest.raises(ValueError, match="unknown LeWMConfig settings"):
        preset_config("tiny", action_dim=2, embdim=3)


def test_wrong_action_width_is_named():
    model = LeWM.from_preset("tiny", action_dim=2)
    with pytest.raises(ValueError, match="expects 10"):
        model.encode_actions(torch.zeros(1, 3, 7))


# -- SIGReg ------------------------------------------------------------------------------------------


def test_sigreg_small_on_gaussian_large_on_collapse_and_scale():
    torch.manual_seed(0)
    sig = SIGReg()
    gauss = sig(torch.randn(4, 512, 64)).item()
    collapsed = sig(torch.zeros(4, 512, 64) + 0.01 * torch.randn(4, 512, 1)).item()
    scaled = sig(3 * torch.randn(4, 512, 64)).item()
    shifted = sig(torch.randn(4, 512, 64) + 2).item()
    assert gauss < 2.0  # the N-scaled statistic is O(1) under the null
    assert min(collapsed, scaled, shifted) > 20 * gauss


def test_sigreg_has_gradients_that_reduce_it():
    torch.manual_seed(0)
    z = (0.2 * torch.randn(1, 256, 16)).requires_grad_()
    opt = torch.optim.Adam([z], lr=0.05)
    sig = SIGReg(num_proj=256)
    first = sig(z).item()
    for _ in range(150):
        opt.zero_grad()
        loss = sig(z)
        loss.backward()
        opt.step()
    assert z.grad is not None and sig(z).item() < 0.2 * first
    assert abs(z.detach().std().item() - 1.0) < 0.2


def test_sigreg_paper_variant_differs_by_n_scaling():
    torch.manual_seed(0)
    z = torch.randn(2, 128, 32) * 1.5
    g = torch.Generator().manual_seed(1)
    off = SIGReg(variant="official")(z, generator=g).item()
    g = torch.Generator().manual_seed(1)
    paper = SIGReg(variant="paper")(z, generator=g).item()
    assert off > 10 * paper > 0  # official statistic is multiplied by N = 128
    with pytest.raises(ValueError, match="official"):
        SIGReg(variant="nope")


def test_a_failing_compile_names_the_fix():
    import torch._inductor.config as inductor_config

    model = LeWM.from_preset("tiny", action_dim=2, embed_dim=16, pred_depth=1).eval().compile_rollout()
    args = torch.randn(1, 1, 16), torch.randn(1, 0, 10), torch.randn(1, 4, 5, 10)
    with inductor_config.patch({"cpp.cxx": ("no-such-compiler",), "force_disable_caches": True}):
        with pytest.raises(RuntimeError, match="C\\+\\+ compiler.*compile_rollout\\(False\\)"):
            model.rollout(*args)
    assert model.compile_rollout(False).rollout(*args).shape == (1, 4, 5, 16)
