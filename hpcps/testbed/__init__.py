"""A real network for a described cluster on one machine: one network namespace per node, joined through
a switch, every NIC shaped to the node's bandwidth and delayed by its latency, both in dilated time.

Ranks placed on the nodes talk TCP through those links (MPICH over libfabric's tcp provider), so the
network is real: nobody's model decides when a message arrives. Compute is still charged as under
emulation (reference step, node speed, thread model, dilation). See docs/testbed.md.

Layout:
- plan:    the pure part: names, address plan, default dilation, the ip/tc/iptables commands of a
           testbed, the hydra host list and launcher script;
- runner:  the one class that runs ip, tc and iptables and looks at what exists;
- control: up, down and run, built from the two;
- delay:   the delay line that holds each packet for its link's latency (netfilter queues);
- ranks:   how a training run knows that its ranks stand on testbed nodes.
"""

from hpcps.testbed.plan import TestbedPlan, default_dilation, plan_testbed

__all__ = ["TestbedPlan", "default_dilation", "plan_testbed"]
