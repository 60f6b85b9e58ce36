"""The parameter server: sharding, the exchange of shards over MPI, server-side aggregation and updates."""
