"""Checkpoints: omnifast's own format and the original OmniMotion layout."""

import dataclasses

import pytest
import torch
from conftest import TINY_AFFINE_MODEL

import omnifast
from omnifast.config import ModelConfig
from omnifast.model import OmniMotion, sample_depths, unproject

SMALL = dataclasses.replace(TINY_AFFINE_MODEL, affine_layers=8)


def _outputs(model, x, frames):
    with torch.no_grad():
        u = model.to_canonical(x, frames)
        back = model.from_canonical(u, frames)
        rgb, sigma = model.color_density(u)
    return u, back, rgb, sigma


def _original_dict(model, with_masks=True, extra=True):
    deform = model.deform_mlp.state_dict()
    if not with_masks:
        deform = {k: v for k, v in deform.items() if not k.endswith(".mask")}
    ckpt = {
        "feature_mlp": model.feature_mlp.state_dict(),
        "deform_mlp": deform,
        "color_mlp": model.color_mlp.state_dict(),
        "num_imgs": model.num_frames,
    }
    if extra:
        opt = torch.optim.Adam([{"params": model.feature_mlp.parameters(), "lr": 1e-3},
                                {"params": model.deform_mlp.parameters(), "lr": 1e-4},
                                {"params": model.color_mlp.parameters(), "lr": 3e-4}])
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=20000, gamma=0.5)
        ckpt["optimizer"] = opt.state_dict()
        ckpt["scheduler"] = sched.state_dict()
    return ckpt


@pytest.fixture
def inputs():
    return torch.rand(2, 10, 8, 3) * 2 - 1, torch.tensor([1, 6])


@pytest.mark.parametrize("use_affine", [True, False])
def test_original_layout_loads_and_reproduces(tmp_path, inputs, use_affine):
    cfg = ModelConfig(**{**SMALL.__dict__, "use_affine": use_affine})
    src = OmniMotion(cfg, num_frames=7, seed=3, coords=(2, 0, 1, 0, 2, 1))
    path = tmp_path / "model_100000.pth"
    torch.save(_original_dict(src), path)
    loaded = omnifast.load_omnimotion_checkpoint(path)
    assert loaded.num_frames == 7
    assert loaded.config.use_affine == use_affine
    assert loaded.config.coupling_hidden == (16, 16, 16) and loaded.config.code_dim == 8
    assert loaded.deform_mlp.coords == (2, 0, 1, 0, 2, 1)  # read from the mask buffers
    for a, b in zip(_outputs(src, *inputs), _outputs(loaded, *inputs)):
        assert torch.allclose(a, b, atol=1e-6)


def test_checkpoint_without_masks_uses_the_seeded_order(tmp_path, inputs):
    src = OmniMotion(SMALL, num_frames=5)  # seed 1234, like the original's construction
    path = tmp_path / "old.pth"
    torch.save(_original_dict(src, with_masks=False), path)
    loaded = omnifast.load_omnimotion_checkpoint(path)
    assert loaded.deform_mlp.coords == src.deform_mlp.coords
    for a, b in zip(_outputs(src, *inputs), _outputs(loaded, *inputs)):
        assert torch.allclose(a, b, atol=1e-6)
    forced = omnifast.load_omnimotion_checkpoint(path, coords=(0, 1, 2, 0, 1, 2))
    assert forced.deform_mlp.coords == (0, 1, 2, 0, 1, 2)


def test_checkpoint_without_masks_recovers_coords_from_an_image(tmp_path):
    src = OmniMotion(SMALL, num_frames=4, seed=11, coords=(2, 1, 0, 0, 2, 1))
    h, w = 24, 32
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    px = torch.stack([xs, ys], -1).float().reshape(-1, 2)
    depths = sample_depths((), SMALL.num_samples, SMALL.min_depth, SMALL.max_depth)
    with torch.no_grad():
        u = src.to_canonical(unproject(px, depths, h, w)[None], torch.tensor([0]))
        rgb, _, _ = src.render(u[0])
    image = rgb.reshape(h, w, 3)
    path = tmp_path / "old.pth"
    torch.save(_original_dict(src, with_masks=False, extra=False), path)
    loaded = omnifast.load_omnimotion_checkpoint(path, reference_image=image)
    assert loaded.deform_mlp.coords == (2, 1, 0, 0, 2, 1)


def test_paper_sized_checkpoint_without_masks_gets_y_x_z(tmp_path):
    src = OmniMotion.from_preset("omnimotion", num_frames=3, seed=99)
    ckpt = _original_dict(src, with_masks=False, extra=False)
    torch.save(ckpt, tmp_path / "paper.pth")
    loaded = omnifast.load_omnimotion_checkpoint(tmp_path / "paper.pth")
    assert loaded.deform_mlp.coords == (1, 0, 2, 1, 0, 2)
    assert loaded.config.use_affine and loaded.config.affine_layers == 8


def test_own_checkpoint_round_trip(tmp_path, inputs):
    src = OmniMotion(SMALL, num_frames=9, seed=5)
    path = tmp_path / "sub" / "tracker.pt"
    omnifast.save_checkpoint(src, path, frame_size=(24, 32))
    model, extra = omnifast.load_checkpoint(path, with_extra=True)
    assert extra == {"frame_size": (24, 32)}
    assert model.config == SMALL and model.num_frames == 9
    for a, b in zip(_outputs(src, *inputs), _outputs(model, *inputs)):
        assert torch.equal(a, b)
    assert [p.name for p in path.parent.iterdir()] == ["tracker.pt"]  # no temp files left


def test_bad_checkpoints_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        omnifast.load_omnimotion_checkpoint(tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02not a checkpoint at all")
    with pytest.raises(omnifast.CheckpointError, match="not a readable"):
        omnifast.load_omnimotion_checkpoint(corrupt)
    with pytest.raises(omnifast.CheckpointError, match="not a readable"):
        omnifast.load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(omnifast.CheckpointError, match="not an OmniMotion checkpoint"):
        omnifast.load_omnimotion_checkpoint(foreign)
    with pytest.raises(omnifast.CheckpointError, match="not an omnifast checkpoint"):
        omnifast.load_checkpoint(foreign)
    src = OmniMotion(SMALL, num_frames=3)
    original = tmp_path / "orig.pth"
    torch.save(_original_dict(src, extra=False), original)
    with pytest.raises(omnifast.CheckpointError, match="use omnifast.load_omnimotion"):
        omnifast.load_checkpoint(original)
    broken = _original_dict(src, extra=False)
    del broken["deform_mlp"]["layers1.2.map_st.0.mlp.2.weight"]
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(omnifast.CheckpointError, match="keys do not match"):
        omnifast.load_omnimotion_checkpoint(tmp_path / "broken.pth")
