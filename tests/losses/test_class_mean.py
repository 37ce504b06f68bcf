"""The class-conditional intensity term (ClassMeanLoss) and its per-class sums."""

import math

import torch

from medgan.keys import UNLABELLED
from medgan.losses import ClassMeanLoss, class_sums


def _volume():
    """Two samples, 3 classes: class 1 at 0.2 in the left half, class 2 at -0.5 in a corner."""
    y = torch.zeros(2, 1, 4, 6, 6, dtype=torch.long)
    y[:, :, :, :3] = 1
    y[:, :, :2, 4:, 4:] = 2
    x = torch.full(y.shape, 0.9)
    x[y == 1], x[y == 2] = 0.2, -0.5
    return x, y


def test_class_sums_count_each_class_and_skip_unlabelled():
    x, y = _volume()
    y[1, 0, 0] = UNLABELLED
    sums, counts = class_sums(x, y, 3)
    assert counts[0].tolist() == [4 * 6 * 6 - 72 - 8, 72, 8]
    assert counts[1].sum() == 4 * 6 * 6 - 36  # the unlabelled slice counts nowhere
    assert torch.allclose(sums / counts, torch.tensor([[0.9, 0.2, -0.5]] * 2))


def test_zero_at_the_reference_and_the_mean_absolute_error_of_foreground_classes():
    x, y = _volume()
    loss = ClassMeanLoss()
    m = torch.tensor([True, True])
    assert float(loss(x, y, m, torch.tensor([5.0, 0.2, -0.5]))) < 1e-6  # background (class 0) never matched
    got = float(loss(x, y, m, torch.tensor([0.0, 0.3, -0.1])))
    assert math.isclose(got, (0.1 + 0.4) / 2, rel_tol=1e-5)


def test_unknown_classes_and_unlabelled_samples_are_left_out():
    x, y = _volume()
    loss = ClassMeanLoss()
    ref = torch.tensor([0.0, float("nan"), 0.0])  # class 1 not in the reference
    assert math.isclose(float(loss(x, y, torch.tensor([True, True]), ref)), 0.5, rel_tol=1e-5)
    x[1] += 1.0  # only the unlabelled sample moves: no change
    assert math.isclose(float(loss(x, y, torch.tensor([True, False]), ref)), 0.5, rel_tol=1e-5)
    assert loss(x, y, torch.tensor([False, False]), ref) is None
    assert loss(x, y, torch.tensor([True, True]), torch.tensor([0.0, float("nan"), float("nan")])) is None


def test_gradient_moves_each_organ_towards_its_reference():
    x, y = _volume()
    x.requires_grad_(True)
    ClassMeanLoss()(x, y, torch.tensor([True, True]), torch.tensor([0.0, 0.5, -0.8])).backward()
    assert (x.grad[y == 1] < 0).all() and (x.grad[y == 2] > 0).all()  # class 1 up, class 2 down
    assert (x.grad[y == 0] == 0).all()
