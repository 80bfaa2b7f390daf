"""models.summary: the one-line description notebooks print of the nets they compare."""

from __future__ import annotations

from mxnet.gluon import nn

from d2lbn import models

BOOK = ("conv 6 > BN > sigmoid > pool > conv 16 > BN > sigmoid > pool > "
        "dense 120 > BN > sigmoid > dense 84 > BN > sigmoid > dense 10")


def test_every_bn_kind_reads_as_the_books_lenet():
    for norm in ("scratch", "hybrid", "gluon", "fast"):
        assert models.summary(models.lenet(norm)) == BOOK, norm


def test_summary_shows_what_the_options_change():
    assert models.summary(models.lenet(None)) == BOOK.replace(" > BN", "")
    after = models.summary(models.lenet("gluon", placement="after", activation="relu",
                                        dropout=(0.5, 0.0), use_bias=False, norm_conv=False))
    assert after == ("conv 6 (no bias) > relu > pool > conv 16 (no bias) > relu > pool > "
                     "dense 120 (no bias) > relu > BN > dropout 0.5 > "
                     "dense 84 (no bias) > relu > BN > dense 10")


def test_frozen_and_other_norms_are_named():
    frozen = models.lenet(lambda c, d: nn.BatchNorm(in_channels=c, use_global_stats=True))
    assert models.summary(frozen).count("BN (frozen statistics)") == 4
    layer_norm = models.lenet(lambda c, d: nn.LayerNorm(in_channels=c))
    assert models.summary(layer_norm).count("LayerNorm") == 4
