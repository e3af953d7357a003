import io
import pickle

import pytest
import torch

from core.model.network import FROZEN_PREFIXES, Checkpoint, DigitNet, ModelConfig, for_inference


def _checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    model = DigitNet()
    return Checkpoint(state_dict=model.state_dict(), metrics={"mnist_test_accuracy": 0.5},
                      meta={"data_sha256": "abc", "temperature": 1.3})


def test_shapes_and_parameter_count() -> None:
    model = DigitNet().eval()
    out = model(torch.zeros(4, 1, 28, 28))
    assert out.shape == (4, 10)
    assert model.fc1.in_features == 1152
    # the seed's size: roughly 0.4 M parameters
    assert 350_000 < sum(p.numel() for p in model.parameters()) < 450_000


def test_trunk_is_exactly_the_frozen_layers() -> None:
    model = DigitNet()
    trunk_keys = {k for k in model.state_dict() if k.startswith(FROZEN_PREFIXES)}
    assert trunk_keys and all(k.split(".")[0] in {"conv1", "bn1", "conv2", "bn2"} for k in trunk_keys)


def test_round_trip_bytes_and_file(tmp_path) -> None:
    original = _checkpoint()
    restored = Checkpoint.from_bytes(original.to_bytes())
    assert restored.metrics == original.metrics and restored.meta == original.meta
    assert restored.config == ModelConfig()
    for key, value in original.state_dict.items():
        assert torch.equal(value, restored.state_dict[key])
    path = tmp_path / "sub" / "model.pt"
    original.save(path)
    x = torch.randn(2, 1, 28, 28)
    assert torch.allclose(original.build()(x), Checkpoint.load(path).build()(x))
    assert not list(path.parent.glob(".*.tmp"))  # atomic write leaves no temporary file


class _Evil:
    def __reduce__(self):  # pragma: no cover - must never run
        return (exec, ("raise SystemExit('pickled code executed')",))


def test_loading_never_executes_pickled_code() -> None:
    buffer = io.BytesIO()
    torch.save({"format": "digitbot-checkpoint-v1", "payload": _Evil()}, buffer)
    with pytest.raises(pickle.UnpicklingError):
        Checkpoint.from_bytes(buffer.getvalue())


def test_rejects_foreign_dicts() -> None:
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(1)}, buffer)
    with pytest.raises(ValueError, match="not a digitbot checkpoint"):
        Checkpoint.from_bytes(buffer.getvalue())


def test_inference_copy_folds_batchnorm_and_gives_the_same_outputs() -> None:
    torch.manual_seed(0)
    model = DigitNet()
    for bn in (model.bn1, model.bn2, model.bn3):  # non-trivial statistics and affine parameters
        assert bn.running_mean is not None and bn.running_var is not None
        with torch.no_grad():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
    model.eval()
    fast = for_inference(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), model(x),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(fast.head(fast.trunk(x)), model.head(model.trunk(x)), atol=1e-4, rtol=1e-4)
    assert isinstance(model.bn1, torch.nn.BatchNorm2d)  # the original is untouched
