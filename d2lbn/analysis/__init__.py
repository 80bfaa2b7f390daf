"""Tools that look inside a trained net: BN statistics, folding, invariances, activations and
the loss landscape."""
