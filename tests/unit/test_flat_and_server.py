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


def test_round_piece_aggregates_each_round_as_the_bsp_piece_does_bit_for_bit():
    from hpcps.ps.server import RoundPiece
    piece = Piece(0, 0, 0, 0, 37)
    rng = np.random.default_rng(3)
    init = rng.standard_normal(37).astype(np.float32)
    opt = OptimizerConfig("adam", lr=0.01)
    batches = [5, 17, 42]
    bsp = ServedPiece(piece, init, batches, opt)
    ssp = RoundPiece(piece, init, batches, opt, rounds=3)
    pushes = rng.standard_normal((4, 3, 37)).astype(np.float32)     # rounds x workers
    # Round 1 and 2 pushes arrive before round 0 is complete: each lands in its own row set.
    for r in (1, 2):
        assert ssp.set_free(r)
        for row in range(3):
            ssp.rows[ssp.row_set(r), row] = pushes[r, row]
            ssp.push_arrived(r, row)
    assert not ssp.set_free(3) and not ssp.round_complete()
    for row in range(3):
        ssp.rows[0, row] = pushes[0, row]
        ssp.push_arrived(0, row)
    for r in range(3):
        bsp.rows[:] = pushes[r]
        bsp.aggregate_and_step()
        assert ssp.round_complete()
        ssp.aggregate_round()
        assert ssp.version == r + 1 and bsp.params.tobytes() == ssp.params.tobytes()
    assert ssp.set_free(3) and not ssp.round_complete()


def test_async_piece_steps_on_each_push_with_its_weight():
    from hpcps.ps.server import AsyncPiece
    piece = Piece(0, 0, 0, 0, 4)
    a = AsyncPiece(piece, np.zeros(4, np.float32), [1, 3], OptimizerConfig("sgd", lr=1.0))
    a.rows[1] = 8.0
    assert a.apply(1) == 0 and np.all(a.params == -6.0)
    a.rows[0] = 8.0
    assert a.apply(0) == 1 and np.all(a.params == -8.0) and a.applied.tolist() == [1, 1] and a.version == 2
