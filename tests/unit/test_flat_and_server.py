import numpy as np
import torch
from torch import nn

from hpcps.config.job import OptimizerConfig
from hpcps.ps.flat import FlatModel
from hpcps.ps.plan import Piece
from hpcps.ps.server import ServedPiece, aggregation_weights


def test_backward_writes_into_the_flat_gradient_buffer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    reference = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))
    reference.load_state_dict(model.state_dict())
    flat = FlatModel(model)
    x = torch.randn(6, 4)
    for _ in range(2):                       # a second step must not accumulate onto the first
        flat.zero_grad()
        model(x).pow(2).sum().backward()
    reference(x).pow(2).sum().backward()
    expected = torch.cat([p.grad.reshape(-1) for p in reference.parameters()])
    assert torch.allclose(flat.grads, expected)
    # the flat parameter buffer is the model's storage: writing it changes the model
    flat.params.zero_()
    assert all((p == 0).all() for p in model.parameters())


def test_aggregation_weights_by_batch_size():
    w = aggregation_weights([5, 17, 42])
    assert np.allclose(w, [5 / 64, 17 / 64, 42 / 64]) and w.dtype == np.float32


def test_server_step_is_sgd_on_the_weighted_mean():
    piece = Piece(0, 0, 0, 0, 3)
    server = ServedPiece(piece, np.array([1.0, 2.0, 3.0], np.float32), [1, 3], OptimizerConfig("sgd", lr=0.5))
    server.wires[0][:] = [4.0, 0.0, 0.0]
    assert not server.push_arrived(0)          # one of two pushes: not yet complete
    server.wires[1][:] = [0.0, 4.0, 8.0]
    assert server.push_arrived(1)
    server.aggregate_and_step()
    # mean gradient = 1/4 * row0 + 3/4 * row1 = [1, 3, 6]
    assert np.allclose(server.params, [1 - 0.5, 2 - 1.5, 3 - 3.0])
    assert server.received == 0                # ready for the next iteration's pushes
