"""data.train_weights: the engine's epoch holds each train file in the set proportion."""

from distill.data import read_annotations
from distill.engine.data import build_train_stream


def test_the_stream_holds_labels_and_half_the_second_file(make_recipe, corpus):
    n = len(read_annotations(corpus["train"]))
    extra = {"data.train": f"[{corpus['train']}, {corpus['train']}]", "data.trim_fraction": 0.0}
    plain = build_train_stream(make_recipe("baseline", **extra), 0, 1)
    mixed = build_train_stream(
        make_recipe("baseline", **extra, **{"data.train_weights": "[1.0, 0.5]"}), 0, 1
    )
    assert len(plain.datasets[1]) == 2 * n
    assert len(mixed.datasets[1]) == n + round(n / 2)
