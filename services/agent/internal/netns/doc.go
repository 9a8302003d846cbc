// Package netns gives each container its own network namespace and
// connects it to the node's container network through CNI (libcni with
// the bridge, host-local and loopback plugins): a per-node bridge, an
// address from the node's container subnet, a default route through the
// bridge, and one per-node MASQUERADE rule for traffic leaving the subnet.
// Everything is named per node (bridge, CNI network, IPAM and cache
// directories, the NAT rule's comment) so several nodes can share a host.
// It does not create containers and knows nothing of runc.
package netns
