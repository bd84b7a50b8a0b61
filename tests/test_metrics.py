"""Classification and language-modelling metrics against hand-computed values."""

import math

import pytest
import torch

from memmodel.metrics import bits_per_byte, mean_interval, wilson_interval

sklearn = pytest.importorskip("sklearn")

from memmodel.metrics import classification_metrics, plot_confusion  # noqa: E402

# true 0 0 0 1 1 2, predicted 0 1 0 1 2 2: the confusion matrix
#   [[2, 1, 0],
#    [0, 1, 1],
#    [0, 0, 1]]
# precision 1, 1/2, 1/2; recall 2/3, 1/2, 1; F1 4/5, 1/2, 2/3
Y_TRUE, Y_PRED = [0, 0, 0, 1, 1, 2], [0, 1, 0, 1, 2, 2]


def test_macro_figures_by_hand():
    r = classification_metrics(Y_TRUE, Y_PRED, labels=[0, 1, 2], resamples=0)
    assert r.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    assert r.accuracy == pytest.approx(4 / 6)
    assert r.precision == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert r.recall == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert r.f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert r.per_class["f1"] == pytest.approx([0.8, 0.5, 2 / 3])
    assert r.per_class["support"] == [3, 2, 1]
    assert (r.ci_low, r.ci_high) == pytest.approx(wilson_interval(4, 6))
    assert r.f1_low == r.f1_high == r.f1 and r.outside == [0, 0, 0]


def test_a_prediction_outside_the_classes_is_an_error_of_its_example():
    r = classification_metrics([0, 0, 1, 1], [0, 9, 1, 1], labels=[0, 1], resamples=0)
    # class 0: precision 1/1, recall 1/2; class 1: precision 2/2, recall 2/2
    assert r.accuracy == pytest.approx(0.75)
    assert r.precision == pytest.approx(1.0)
    assert r.recall == pytest.approx(0.75)
    assert r.f1 == pytest.approx((2 / 3 + 1) / 2)
    assert r.confusion == [[1, 0], [0, 2]] and r.outside == [1, 0]


def test_a_class_never_predicted_scores_zero_and_the_interval_brackets_the_figure():
    r = classification_metrics(torch.tensor([0, 1, 2, 2]), torch.tensor([0, 0, 2, 2]),
                               labels=[0, 1, 2], names=["a", "b", "c"], resamples=200)
    assert r.per_class["precision"][1] == 0 and r.per_class["recall"][1] == 0
    assert r.names == ["a", "b", "c"]
    assert r.f1_low <= r.f1 <= r.f1_high
    again = classification_metrics([0, 1, 2, 2], [0, 0, 2, 2], labels=[0, 1, 2],
                                   resamples=200)
    assert (again.f1_low, again.f1_high) == (r.f1_low, r.f1_high)  # a fixed seed


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="not among labels"):
        classification_metrics([0, 5], [0, 1], labels=[0, 1])
    with pytest.raises(ValueError, match="one non-empty length"):
        classification_metrics([0, 1], [0], labels=[0, 1])
    with pytest.raises(TypeError, match="integer y_pred"):
        classification_metrics([0, 1], [0.0, 1.0], labels=[0, 1])
    with pytest.raises(ValueError, match="distinct labels"):
        classification_metrics([0], [0], labels=[0, 0])


def test_the_confusion_png(tmp_path):
    pytest.importorskip("matplotlib")
    r = classification_metrics(Y_TRUE, Y_PRED, labels=[0, 1, 2], resamples=0)
    assert plot_confusion(r, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bits_per_byte_and_the_mean_interval():
    assert bits_per_byte(math.log(2)) == pytest.approx(1.0)
    assert bits_per_byte(math.log(256)) == pytest.approx(8.0)
    m, lo, hi = mean_interval([1.0, 2.0, 3.0])
    half = 1.959963984540054 * 1.0 / math.sqrt(3)
    assert (m, lo, hi) == pytest.approx((2.0, 2.0 - half, 2.0 + half))
    assert mean_interval([5.0]) == (5.0, 5.0, 5.0)
