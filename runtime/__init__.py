"""The torch runtime profile and validate share: the reference decoder, apply_* parallelisms, process helpers."""
