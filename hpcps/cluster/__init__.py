"""Clusters: what machines there are (description), and which ranks each node runs (placement)."""

from hpcps.cluster.description import Cluster, Node, NodeType, load_cluster, parse_cluster
from hpcps.cluster.hostlist import HostlistError, expand_hostlist

__all__ = ["Cluster", "Node", "NodeType", "load_cluster", "parse_cluster", "HostlistError", "expand_hostlist"]
