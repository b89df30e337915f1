"""Virtual networks on one host: network namespaces, bridges and veths (netlink), nftables rules, hosts files."""
