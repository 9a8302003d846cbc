// Package netns gives each container its own network namespace, with its
// loopback up, and connects it to the node's container network through
// CNI (libcni with the bridge and host-local plugins): a per-node bridge,
// an address from the node's container subnet, a default route through
// the bridge, and one per-node MASQUERADE rule for traffic leaving the
// subnet. The loopback is set up in process when the namespace is made,
// as runc does for namespaces it makes: it is one ioctl, and the loopback
// plugin would cost a process per container.
// Everything is named per node (bridge, CNI network, IPAM and cache
// directories, the NAT rule's comment) so several nodes can share a host.
// It does not create containers and knows nothing of runc.
package netns
