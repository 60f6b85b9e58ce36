"""MPI-facing helpers: device buffers for the exchange, and ending the whole job on any rank's failure."""
