"""The OmniMotion networks: sizes, names, construction and mapping behaviour (spec section 3)."""

import math

import pytest
import torch
from conftest import TINY_AFFINE_MODEL

import omnifast
from omnifast.config import ModelConfig
from omnifast.model import OmniMotion, contract, project, sample_depths, unproject
from omnifast.reference.bijection import positional_encoding

SMALL = TINY_AFFINE_MODEL


@pytest.fixture(scope="module")
def paper_model():
    return OmniMotion.from_preset("omnimotion", num_frames=20)


def _count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_spec(paper_model):
    assert _count(paper_model.feature_mlp) == 167_552
    assert _count(paper_model.deform_mlp) == 2_010_129
    assert _count(paper_model.color_mlp) == 806_404
    no_affine = OmniMotion(ModelConfig(use_affine=False), num_frames=20)
    assert _count(no_affine.deform_mlp) == 1_611_276


def test_state_dict_keys_and_shapes_match_spec(paper_model):
    feat = paper_model.feature_mlp.state_dict()
    assert len(feat) == 18
    assert feat["linear.0.weight"].shape == (256, 256)
    assert feat["output_linear.weight"].shape == (128, 256)
    assert feat["filters.2.mu"].shape == (256, 1)
    assert feat["filters.2.gamma"].shape == (256,)
    color = paper_model.color_mlp.state_dict()
    assert len(color) == 24
    assert color["filters.3.mu"].shape == (512, 3)
    assert color["output_linear.weight"].shape == (4, 512)
    deform = paper_model.deform_mlp.state_dict()
    assert len(deform) == 106
    assert deform["layers1.0.mask"].shape == (1, 1, 1, 3)
    assert deform["layers1.5.map_st.0.mlp.0.weight"].shape == (256, 384)
    assert deform["layers1.5.map_st.0.mlp.6.weight"].shape == (2, 256)
    assert deform["layers1.3.projection.proj.0.weight"].shape == (256, 18)
    assert deform["code_projectors.4.mlp.2.weight"].shape == (128, 128)
    assert deform["affine_mlp.hidden.0.0.weight"].shape == (256, 10)
    assert deform["affine_mlp.hidden.6.0.weight"].shape == (256, 256)
    assert deform["affine_mlp.hidden.7.weight"].shape == (5, 256)
    # parameter order within a Gabor filter: mu, gamma, linear.weight, linear.bias
    names = [n for n, _ in paper_model.feature_mlp.named_parameters()]
    assert names[-4:] == ["filters.2.mu", "filters.2.gamma", "filters.2.linear.weight",
                          "filters.2.linear.bias"]
    assert len(list(paper_model.parameters())) == 18 + 100 + 24


def test_seeded_construction_gives_the_originals_coupling_order(paper_model):
    # seed 1234 in the original's construction order -> transformed coords y, x, z, y, x, z
    assert paper_model.deform_mlp.coords == (1, 0, 2, 1, 0, 2)
    masks = [tuple(layer.mask.flatten().tolist()) for layer in paper_model.deform_mlp.layers1]
    assert masks == [(1, 0, 1), (0, 1, 1), (1, 1, 0)] * 2


def test_construction_leaves_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    OmniMotion(SMALL, num_frames=4)
    assert torch.equal(torch.rand(3), expected)


def test_gabor_initialisation_ranges(paper_model):
    for net, alpha in ((paper_model.feature_mlp, 4.5 / 3), (paper_model.color_mlp, 3.0 / 4)):
        for f in net.filters:
            assert (f.gamma > 0).all()
            assert f.mu.abs().max() <= 1.0
            assert f.linear.bias.abs().max() <= math.pi
        gammas = torch.cat([f.gamma.detach() for f in net.filters])
        assert abs(gammas.mean().item() - alpha) < 0.25 * alpha  # Gamma(alpha, 1) mean
        bound = math.sqrt(1.0 / net.linear[0].weight.shape[0])
        assert net.linear[0].weight.abs().max() <= bound


def test_round_trip_local_canonical_local():
    model = OmniMotion(SMALL, num_frames=10)
    x = torch.rand(3, 50, 8, 3) * 2 - 1
    frames = torch.tensor([0, 4, 9])
    u = model.to_canonical(x, frames)
    assert u.shape == x.shape
    assert (u - x).abs().max() > 1e-3  # the map is not the identity
    back = model.from_canonical(u, frames)
    assert (back - x).abs().max() < 1e-5


def test_paper_model_round_trip(paper_model):
    x = torch.rand(2, 40, 4, 3) * 2 - 1
    frames = torch.tensor([3, 17])
    with torch.no_grad():
        back = paper_model.from_canonical(paper_model.to_canonical(x, frames), frames)
    assert (back - x).abs().max() < 1e-5


def test_each_coupling_layer_changes_only_its_coordinate():
    cfg = ModelConfig(code_dim=8, code_hidden=16, num_coupling=1, coupling_hidden=(16,),
                      proj_dim=16, use_affine=False, color_hidden=16)
    for coord in range(3):
        model = OmniMotion(cfg, num_frames=5, coords=(coord,))
        x = torch.rand(1, 30, 1, 3)
        u = model.to_canonical(x, torch.tensor([2]))
        changed = (u - x).abs().amax(dim=(0, 1, 2)) > 0
        assert changed.tolist() == [c == coord for c in range(3)]


def test_frames_get_different_maps():
    model = OmniMotion(SMALL, num_frames=10)
    x = torch.rand(1, 20, 4, 3).expand(2, -1, -1, -1)
    u = model.to_canonical(x, torch.tensor([1, 8]))
    assert (u[0] - u[1]).abs().max() > 1e-4


def test_time_codes():
    model = OmniMotion(SMALL, num_frames=4)
    assert model.time_codes(torch.arange(4)).tolist() == [0.25, 0.5, 0.75, 1.0]


def test_positional_encoding_layout():
    u = torch.tensor([[0.3, -0.7]])
    enc = positional_encoding(u, 4)
    w = [math.pi * 2**k for k in range(4)]
    expected = [0.3, -0.7] + [math.sin(f * 0.3) for f in w] + [math.cos(f * 0.3) for f in w] \
        + [math.sin(f * -0.7) for f in w] + [math.cos(f * -0.7) for f in w]
    assert torch.allclose(enc[0], torch.tensor(expected), atol=1e-6)


def test_color_density_ranges_and_contraction():
    model = OmniMotion(SMALL, num_frames=3)
    u = torch.randn(100, 3) * 5
    rgb, sigma = model.color_density(u)
    assert rgb.shape == (100, 3) and sigma.shape == (100,)
    assert ((rgb > 0) & (rgb < 1)).all() and (sigma >= 0).all()
    c = contract(u)
    assert (torch.linalg.norm(c, dim=-1) < 2).all()
    inner = torch.tensor([[0.1, 0.2, -0.3]])
    assert torch.equal(contract(inner), inner)
    far = torch.tensor([[4.0, 0.0, 0.0]])
    assert torch.allclose(contract(far), torch.tensor([[1.75, 0.0, 0.0]]))


def test_render_composites_colour_and_values():
    model = OmniMotion(SMALL, num_frames=3)
    u = torch.randn(5, 8, 3)
    rgb, extra, w = model.render(u, values=u)
    assert rgb.shape == (5, 3) and extra.shape == (5, 3) and w.shape == (5, 8)
    assert torch.allclose(extra, (w[..., None] * u).sum(-2), atol=1e-6)


def test_projection_unprojection_and_samples():
    h, w = 48, 64
    px = torch.tensor([[0.0, 0.0], [63.0, 47.0], [31.5, 23.5]])
    d = sample_depths((), 32, 0.0, 2.0)
    assert d.shape == (32,) and d[0] == 0 and d[-1] == 2
    pts = unproject(px, d, h, w)
    assert pts.shape == (3, 32, 3)
    assert torch.allclose(pts[0, 0, :2], torch.tensor([-1.0, -1.0]))
    assert torch.allclose(pts[1, 0, :2], torch.tensor([1.0, 1.0]))
    back, depth = project(pts, h, w)
    assert torch.allclose(back, px[:, None].expand(-1, 32, -1), atol=1e-5)
    assert torch.allclose(depth[0], d)
    gen = torch.Generator().manual_seed(0)
    s = sample_depths((100,), 32, 0.0, 2.0, stratified=True, generator=gen)
    mids = 0.5 * (d[1:] + d[:-1])
    assert (s[:, 0] >= 0).all() and (s[:, 0] <= mids[0]).all()
    assert (s[:, 1:-1] >= mids[:-1]).all() and (s[:, 1:-1] <= mids[1:]).all()
    assert (s[:, -1] >= mids[-1]).all() and (s[:, -1] <= 2).all()


def test_presets():
    assert set(omnifast.PRESETS) == {"omnimotion", "cpu", "gpu"}
    cpu = omnifast.get_preset("cpu")
    assert cpu.model.coupling_hidden[0] < omnifast.OMNIMOTION.model.coupling_hidden[0]
    assert "shrunk" in cpu.description
    with pytest.raises(ValueError, match="unknown preset"):
        omnifast.get_preset("gpu-huge")
    model = OmniMotion.from_preset("cpu", num_frames=5)
    assert model.deform_mlp.affine_mlp is None


def test_preset_with_steps_scales_every_schedule():
    """with_steps(n) keeps the preset's phases at the same fractions of a shorter or longer
    fit; fields not counted in steps are left alone."""
    cpu = omnifast.get_preset("cpu")
    half = cpu.with_steps(cpu.train.num_iters // 2)
    t, h = cpu.train, half.train
    assert h.num_iters == t.num_iters // 2
    for name in ("lr_decay_steps", "interval_growth_steps", "cache_every", "rgb_ramp_steps",
                 "dist_start", "dist_ramp_steps", "mask_near_steps", "checkpoint_every",
                 "flow_grad_ramp_steps"):
        assert getattr(h, name) == max(1, round(getattr(t, name) / 2)), name
    assert (h.lr_deform, h.num_pts, h.rgb_weight_max, h.start_interval) == (
        t.lr_deform, t.num_pts, t.rgb_weight_max, t.start_interval)
    assert half.model == cpu.model
    tiny = cpu.with_steps(1)
    assert tiny.train.lr_decay_steps == 1 and tiny.train.num_iters == 1
    assert cpu.with_steps(cpu.train.num_iters) == cpu
    with pytest.raises(ValueError, match="num_iters"):
        cpu.with_steps(0)


def test_bad_shapes_are_reported():
    model = OmniMotion(SMALL, num_frames=3)
    with pytest.raises(ValueError, match="frame_ids"):
        model.to_canonical(torch.rand(2, 4, 3), torch.tensor([0]))
    with pytest.raises(ValueError, match="num_frames"):
        OmniMotion(SMALL, num_frames=0)


def test_density_bias_sets_where_the_initial_weight_lies():
    """With the original's bias (1) a fresh model puts most of each ray's weight on its nearest
    samples; a larger bias spreads it along the ray. Old configs load with the original's."""
    import dataclasses  # noqa: PLC0415

    from omnifast.config import model_config_from_dict  # noqa: PLC0415

    base = omnifast.get_preset("cpu").model
    gen = torch.Generator().manual_seed(0)
    px = torch.rand(256, 2, generator=gen) * torch.tensor([127.0, 95.0])
    x = unproject(px, sample_depths((), base.num_samples, 0.0, 2.0), 96, 128)
    first3 = {}
    for bias in (1.0, 3.0):
        model = OmniMotion(dataclasses.replace(base, density_bias=bias), num_frames=4)
        with torch.no_grad():
            w = model.render(model.to_canonical(x[None], torch.tensor([0]))[0])[2]
        first3[bias] = float(w[:, :3].sum(-1).mean() / w.sum(-1).mean())
    assert first3[1.0] > 0.55 and first3[3.0] < 0.3, first3
    legacy = {k: v for k, v in dataclasses.asdict(base).items() if k != "density_bias"}
    assert model_config_from_dict(legacy).density_bias == 1.0
