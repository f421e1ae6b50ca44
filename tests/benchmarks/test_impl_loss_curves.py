"""benchmarks/impl_loss_curves.py: one model, one data order, a loss curve per scan impl."""

import json

import numpy as np

from benchmarks import impl_loss_curves


def test_impl_loss_curves_train_the_same_model_on_the_same_batches_per_impl(tmp_path, capsys):
    argv = ["--shape", "tiny", "--steps", "3", "--dtype", "float32", "--out", str(tmp_path)]
    result = impl_loss_curves.main([*argv, "--impls", "reference", "chunked_sequential"])
    assert json.loads((tmp_path / "impl_loss_curves.json").read_text()) == result
    assert (tmp_path / "impl_loss_curves.png").stat().st_size > 0
    curves = result["curves"]
    assert [len(c["loss"]) for c in curves.values()] == [3, 3]
    # Equal implementations in float32 give one curve; the first loss is that of uniform bytes.
    np.testing.assert_allclose(
        curves["reference"]["loss"], curves["chunked_sequential"]["loss"], rtol=1e-4
    )
    assert abs(curves["reference"]["loss"][0] - np.log(256)) < 0.5
    assert result["max_gap"] < 1e-3
    assert "largest gap between curves" in capsys.readouterr().out


def test_impl_loss_curves_batches_are_byte_windows_with_their_next_byte():
    stream = impl_loss_curves.stdlib_bytes(10_000)
    assert stream.size == 10_000 and stream.max() < 256
    data = impl_loss_curves.batches(stream, steps=2, b=3, length=5)
    assert data.shape == (2, 3, 6)
    np.testing.assert_array_equal(data, impl_loss_curves.batches(stream, 2, 3, 5))
    start = int(
        np.flatnonzero(
            np.all(np.lib.stride_tricks.sliding_window_view(stream, 6) == data[0, 0], axis=1)
        )[0]
    )
    np.testing.assert_array_equal(stream[start : start + 6], data[0, 0])
