"""``taylor_criterion`` forms the product in blocks of examples on the CPU; the blocks must not
change the numbers of eq. 8 (|mean over positions of a * dL/da|)."""

import pytest
import torch

from prunable_nn.taylor import taylor_criterion


def eq8(activation: torch.Tensor, grad: torch.Tensor, channel_dim: int) -> torch.Tensor:
    product = (activation * grad).movedim(channel_dim, 1)
    return product.reshape(product.shape[0], product.shape[1], -1).mean(dim=2).abs()


@pytest.mark.parametrize(
    ("shape", "channel_dim"),
    [
        ((21, 64, 40, 40), 1),  # 8.2 MiB: blocks of 20 and 1 examples
        ((64, 64, 32, 32), 1),  # 16 MiB: two blocks
        ((3, 8, 700, 700), 1),  # one example is more than a block
        ((50, 100, 512), -1),  # Linear on a sequence, 9.8 MiB
        ((64, 512), -1),  # Linear, one block
        ((64, 512, 2, 2), 1),
    ],
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_blocks_give_the_numbers_of_eq8(shape, channel_dim, channels_last):
    generator = torch.Generator().manual_seed(0)
    activation = torch.randn(shape, generator=generator)
    grad = torch.randn(shape, generator=generator) * 1e-3
    if channels_last:
        if len(shape) != 4:
            pytest.skip("channels_last needs a 4-D map")
        activation = activation.contiguous(memory_format=torch.channels_last)
        grad = grad.contiguous(memory_format=torch.channels_last)
    theta = taylor_criterion(activation, grad, channel_dim)
    assert theta.shape == (shape[0], shape[channel_dim])
    torch.testing.assert_close(theta, eq8(activation, grad, channel_dim))
