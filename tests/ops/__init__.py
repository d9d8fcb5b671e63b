"""Tests of the operator commands `xregion top` and `xregion status`."""
