"""Files a command writes: the output policy and the one atomic write (hpcps.io.outputs)."""
