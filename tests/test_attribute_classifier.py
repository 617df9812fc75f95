"""gan-ensembling's CelebA-HQ attribute classifiers: reference logits, real key list, preprocessing, errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from classifiers import ClassifierConfig, build_classifier
from classifiers.attribute import AttributeNet, AttributeNetShape, stylegan_widths
from utils.checkpoints import CheckpointError

DATA = Path(__file__).parent / "data" / "ddpm_celebahq_tiny"
TINY = DATA / "attribute_classifier_tiny"


def tiny_classifier(attribute: str = "Eyeglasses"):
    return build_classifier(ClassifierConfig(name=f"celebahq__{attribute}", checkpoint=str(TINY / "net_best.pth")),
                            Path("."))


def cases(device: torch.device | str = "cpu") -> dict:
    return torch.load(TINY / "cases.pt", weights_only=True, map_location=device)


@pytest.mark.parametrize("attribute", ["Eyeglasses", "Smiling"])
def test_tiny_classifier_matches_reference_logits(attribute, device):
    model = tiny_classifier(attribute).to(device)
    case = cases(device)
    with torch.no_grad():
        logits = model(case["x_u8"].float() / 255.0)
    assert (logits - case["logits"]).abs().max() <= 1e-5 * case["logits"].abs().max()
    assert torch.equal(logits.argmax(1), case["pred"])
    assert torch.allclose(torch.softmax(logits, 1)[:, 1], case["prob_attribute"], atol=1e-6)
    assert torch.equal(logits[:, 0], -logits[:, 1])


def test_widths_read_from_the_file_equal_the_stylegan_formula():
    config = json.loads((TINY / "config.json").read_text())["constructor"]
    state = torch.load(TINY / "net_best.pth", weights_only=True)["state_dict"]
    expected = AttributeNetShape.stylegan(config["resolution"], config["fmap_base"], config["fmap_max"])
    assert AttributeNetShape.from_state_dict(state) == expected
    assert stylegan_widths(256) == (64, 128, 256, 512, 512, 512, 512)
    net = AttributeNet(expected)
    assert sum(p.numel() for p in net.parameters()) == json.loads((TINY / "config.json").read_text())["n_params"]


def test_real_classifier_key_list_loads_on_meta_device():
    reference = json.loads((DATA / "attribute_classifier256_keys.json").read_text())
    with torch.device("meta"):
        net = AttributeNet(AttributeNetShape.stylegan())
    found = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in net.state_dict().items()]
    assert found == [entry[:3] for entry in reference["keys"]]
    assert sum(p.numel() for p in net.parameters()) == reference["n_params"] == 23_038_017
    params = {name for name, _ in net.named_parameters()}
    assert params == {entry[0] for entry in reference["keys"] if entry[3] == "param"}


def test_larger_inputs_are_box_averaged_to_the_net_resolution(device):
    model = tiny_classifier().to(device)
    x = cases(device)["x_u8"].float() / 255.0
    with torch.no_grad():
        upsampled = model(x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
        direct = model(x)
    assert torch.allclose(upsampled, direct, atol=1e-6)
    with pytest.raises(ValueError, match="expected square images of size 256"):
        model(x[..., :200, :200])


def test_input_gradient_flows(device):
    model = tiny_classifier().to(device)
    x = (cases(device)["x_u8"].float() / 255.0).requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x)[:, 1].sum(), x)
    assert grad.abs().sum() > 0


def test_missing_classifier_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"not found: .*pretrained/celebahq/Smiling/net_best\.pth; .*pretrained_classifiers\.zip"):
        build_classifier(ClassifierConfig(name="celebahq__Smiling"), tmp_path)


def test_plain_state_dict_is_rejected_with_the_expected_layout(tmp_path):
    path = tmp_path / "net_best.pth"
    torch.save(torch.load(TINY / "net_best.pth", weights_only=True)["state_dict"], path)
    with pytest.raises(CheckpointError, match="expected a dict with a 'state_dict' entry"):
        build_classifier(ClassifierConfig(name="celebahq__Smiling", checkpoint=str(path)), tmp_path)
    shutil.copy(TINY / "net_best.pth", path)
    with pytest.raises(ValueError, match="has 2 classes"):
        build_classifier(ClassifierConfig(name="celebahq__Smiling", checkpoint=str(path), num_classes=10), tmp_path)
