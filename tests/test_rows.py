"""kit.rows.gather_rows: batches gathered in place equal the joined pieces, and bad batches
are refused instead of leaving rows unwritten."""

import numpy as np
import pytest
import torch

from kit.pipeline import Scored, score_images
from kit.backbones import encode_all
from kit.rows import RowsError, gather_rows


def _pieces(n: int, step: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [(start, [torch.randn(min(step, n - start), 2, 3, generator=gen),
                     torch.randn(min(step, n - start), 5, generator=gen).half()])
            for start in range(0, n, step)]


def test_lists_equal_the_joined_pieces_with_their_dtypes():
    pieces = _pieces(10, 4)
    got = gather_rows(10, iter(pieces))
    assert list(got) == [0, 1]
    for key in (0, 1):
        want = torch.cat([parts[key] for _, parts in pieces])
        assert got[key].dtype == want.dtype and torch.equal(got[key], want)


def test_dtype_converts_every_part():
    got = gather_rows(10, iter(_pieces(10, 3)), dtype=torch.float64)
    assert {t.dtype for t in got.values()} == {torch.float64}


def test_dicts_keep_the_first_batchs_key_order():
    batches = [(0, {"b": torch.ones(2), ("map", "x"): torch.zeros(2, 4)}),
               (2, {("map", "x"): torch.ones(1, 4), "b": torch.full((1,), 7.0)})]
    got = gather_rows(3, iter(batches))
    assert list(got) == ["b", ("map", "x")]
    assert got["b"].tolist() == [1.0, 1.0, 7.0]
    assert got["map", "x"].sum().item() == 4.0


def test_channels_last_is_kept_only_when_asked():
    x = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)
    batches = [(0, [x[:2]]), (2, [x[2:]])]
    kept = gather_rows(4, iter(batches), keep_layout=True)[0]
    plain = gather_rows(4, iter(batches))[0]
    assert kept.is_contiguous(memory_format=torch.channels_last) and not kept.is_contiguous()
    assert plain.is_contiguous()
    assert torch.equal(kept, x) and torch.equal(plain, x)


def test_copies_are_outside_autograd():
    w = torch.ones(3, requires_grad=True)
    got = gather_rows(2, iter([(0, [w[None] * 2]), (1, [w[None] * 3])]))[0]
    assert not got.requires_grad and got.grad_fn is None
    assert got.tolist() == [[2.0] * 3, [3.0] * 3]


def test_no_batches_give_nothing():
    assert gather_rows(0, iter([])) == {}


@pytest.mark.parametrize("batches, message", [
    ([(0, [torch.ones(2)]), (2, [torch.ones(2), torch.ones(2)])], "has parts"),
    ([(0, [torch.ones(2), torch.ones(3)])], "differ in rows"),
    ([(0, [torch.ones(3)]), (3, [torch.ones(3)])], "does not fit"),
    ([(0, [torch.ones(2)])], "filled 2 rows of 5"),
    ([(0, [torch.ones(2)]), (0, [torch.ones(2)])], "where row 2 comes next"),  # overlap
    ([(0, [torch.ones(2)]), (3, [torch.ones(2)])], "where row 2 comes next"),  # gap
    ([(0, [torch.ones(2, 3)]), (2, [torch.ones(3, 1)])], r"shape \[3, 1\]"),  # would broadcast
    ([(0, [])], "no parts"),
])
def test_bad_batches_are_refused(batches, message):
    with pytest.raises(RowsError, match=message):
        gather_rows(5, iter(batches))


def test_a_refused_batch_closes_its_producer():
    closed = []

    def producer():
        try:
            yield 0, [torch.ones(2)]
            yield 0, [torch.ones(2)]
            yield 2, [torch.ones(3)]
        finally:
            closed.append(True)

    with pytest.raises(RowsError):
        gather_rows(5, producer())
    assert closed == [True]


class _Toy:
    """A method stand-in whose predict gives named maps (one with its own image scores) and
    reconstructions of its input, in float16 as some methods' maps are; autograd must be on
    inside predict (DifferNet's gradient maps need it)."""

    class config:
        batch_size = 3
        image_size = 4

    def __init__(self, named_from_row: int = 0):
        self.named_from_row = named_from_row  # batches before it give no named maps
        self.rows_seen = 0

    def predict(self, images):
        from kit.method import Prediction

        assert torch.is_grad_enabled()
        maps = images.mean(1)
        named = {"double": 2 * maps, "half": (maps / 2).half()}
        if self.rows_seen < self.named_from_row:
            named = {}
        self.rows_seen += len(images)
        return Prediction(image_scores=maps.flatten(1).amax(1), anomaly_maps=maps,
                          named_maps=named,
                          named_scores={"half": maps.mean((1, 2))} if named else {},
                          reconstructions=1.2 * images)


def test_score_images_equals_the_batches_joined():
    images = torch.randint(0, 256, (7, 3, 4, 4), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    scored = score_images(_Toy(), images)
    assert isinstance(scored, Scored)
    maps = (images.float() / 255).mean(1).numpy()
    assert scored.maps.dtype == np.float32 and np.array_equal(scored.maps, maps)
    assert np.array_equal(scored.scores, maps.reshape(7, -1).max(1))
    assert np.array_equal(scored.named_maps["double"], 2 * maps)
    assert np.array_equal(scored.named_scores["double"], (2 * maps).reshape(7, -1).max(1))
    assert list(scored.named_maps) == ["double", "half"]
    half = torch.from_numpy(maps / 2).half().float().numpy()
    assert scored.named_maps["half"].dtype == np.float32
    assert np.array_equal(scored.named_maps["half"], half)
    assert np.allclose(scored.named_scores["half"], maps.mean((1, 2)))
    recon = ((1.2 * images.float() / 255).numpy().clip(0, 1) * 255).round().astype(np.uint8)
    assert scored.reconstructions.dtype == np.uint8
    assert np.array_equal(scored.reconstructions, recon)


def test_score_images_of_no_images_and_of_batches_that_disagree():
    empty = score_images(_Toy(), torch.zeros((0, 3, 4, 4), dtype=torch.uint8))
    assert empty.scores.shape == (0,) and empty.maps.shape == (0, 4, 4)
    images = torch.zeros((7, 3, 4, 4), dtype=torch.uint8)
    # named maps from the second batch on: no arrays out of line with the images
    with pytest.raises(ValueError, match="_Toy.predict: the batch at row 3 has parts"):
        score_images(_Toy(named_from_row=3), images)


def test_encode_all_equals_the_joined_batches_in_its_dtype():
    images = torch.randint(0, 256, (5, 3, 6, 6), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(2))

    def features(batch):  # two maps of one batch [B, 3, 6, 6] in [0, 1]
        return [batch[:, :2], batch.mean(1, keepdim=True)[:, :, ::2, ::2]]

    got = encode_all(features, images, 2, dtype=torch.float16)
    want = features(images.float() / 255)
    assert [g.dtype for g in got] == [torch.float16, torch.float16]
    assert all(torch.equal(g, w.half()) for g, w in zip(got, want))
