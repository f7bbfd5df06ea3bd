"""The digits images are read from scikit-learn's own file without importing sklearn: the same pixels and labels."""

import numpy as np
from sklearn.datasets import load_digits

from shoal.data.datasets import _digits_file


def test_digits_file_holds_what_load_digits_returns():
    rows = np.loadtxt(_digits_file(), delimiter=",")
    d = load_digits()
    assert np.array_equal(rows[:, :-1], d.data) and np.array_equal(rows[:, -1].astype(np.int64), d.target)
