"""Emulating a described cluster on one machine: each rank behaves like the node it stands for.

Time runs dilated: one emulated second lasts `dilation` real seconds, so a node faster than this
machine can be emulated by sleeping (the only direction sleeping can go). Reported times are divided
back. See docs/emulation.md for the mechanism and its limits.
"""
