"""The packed encoder layer: feed-forward on present tokens only, same outputs and gradients."""
import torch
from torch import nn

from recbole_onevision.model.packed_encoder import PackedEncoderLayer


def _pair(layers: int = 2):
    torch.manual_seed(0)
    plain = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 2, 32, 0.0, batch_first=True, norm_first=True),
                                  layers, enable_nested_tensor=False)
    packed = nn.TransformerEncoder(PackedEncoderLayer(16, 2, 32, 0.0, batch_first=True, norm_first=True),
                                   layers, enable_nested_tensor=False)
    packed.load_state_dict(plain.state_dict())
    return plain.train(), packed.train()


def test_present_tokens_get_the_plain_layers_outputs_and_gradients():
    plain, packed = _pair()
    x = torch.randn(5, 7, 16)
    mask = torch.rand(5, 7) < 0.5
    mask[:, 0] = False  # every row has a present token
    inputs = [x.clone().requires_grad_(True) for _ in range(2)]
    outputs = [model(i, src_key_padding_mask=mask) for model, i in zip((plain, packed), inputs)]
    present = ~mask
    torch.testing.assert_close(outputs[1][present], outputs[0][present])
    for out in outputs:
        out[present].square().sum().backward()
    torch.testing.assert_close(inputs[1].grad, inputs[0].grad)
    for a, b in zip(plain.parameters(), packed.parameters()):
        torch.testing.assert_close(b.grad, a.grad)
    # absent tokens really skipped the feed-forward block: their states differ from the plain layer's
    assert not torch.allclose(outputs[1][mask], outputs[0][mask])


def test_evaluation_and_unmasked_rows_are_the_plain_layer():
    plain, packed = _pair()
    x = torch.randn(3, 4, 16)
    torch.testing.assert_close(packed(x), plain(x))  # no mask: nothing to skip
    plain.eval(), packed.eval()
    mask = torch.tensor([[False, True, True, True]] * 3)
    torch.testing.assert_close(packed(x, src_key_padding_mask=mask), plain(x, src_key_padding_mask=mask))
