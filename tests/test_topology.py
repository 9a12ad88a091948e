"""Ordering and tree shape as properties."""
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kadeploy.core.topology import (
    NodeInfo,
    address_key,
    build_tree,
    HostList,
    order_nodes,
    render,
)


@settings(deadline=None)
@given(n=st.integers(0, 600), arity=st.integers(1, 40))
def test_every_node_reached_once_with_at_most_arity_children(n, arity):
    tree = build_tree(n, arity)
    seen = []
    frontier = [0]
    while frontier:
        pos = frontier.pop()
        kids = tree.children(pos)
        assert len(kids) <= arity
        for k in kids:
            assert tree.parent(k) == pos
            assert tree.depth(k) == tree.depth(pos) + 1
        seen.extend(kids)
        frontier.extend(kids)
    assert sorted(seen) == list(range(1, n + 1))


@given(n=st.integers(1, 300))
def test_arity_one_is_a_chain(n):
    tree = build_tree(n, 1)
    assert [tree.parent(p) for p in range(1, n + 1)] == list(range(0, n))
    assert tree.height == n


@given(n=st.integers(1, 2000), arity=st.integers(2, 8))
def test_tree_height_is_logarithmic(n, arity):
    tree = build_tree(n, arity)
    # A complete tree: height is the smallest h with arity + ... + arity**h >= n.
    h, total = 0, 0
    while total < n:
        h += 1
        total += arity ** h
    assert tree.height == h


def test_bad_arity():
    with pytest.raises(ValueError):
        build_tree(3, 0)


ipv4 = st.integers(0, 2**32 - 1).map(lambda i: str(ipaddress.IPv4Address(i)))
ipv6 = st.integers(0, 2**128 - 1).map(lambda i: str(ipaddress.IPv6Address(i)))


@settings(deadline=None)
@given(addrs=st.lists(st.one_of(ipv4, ipv6), min_size=1, max_size=60), seed=st.randoms())
def test_order_is_numeric_and_independent_of_arrival(addrs, seed):
    nodes = [NodeInfo(node_id=i + 1, address=a, data_port=30764) for i, a in enumerate(addrs)]
    shuffled = nodes[:]
    seed.shuffle(shuffled)
    # node_id (arrival) only breaks ties between identical address and port.
    key = lambda n: (address_key(n.address), n.data_port)
    assert [key(n) for n in order_nodes(shuffled)] == [key(n) for n in order_nodes(nodes)]
    ordered = order_nodes(nodes)
    # An IPv4-mapped IPv6 address is the IPv4 node it maps (the server sees both).
    ips = [ipaddress.ip_address(n.address) for n in ordered]
    ips = [ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip for ip in ips]
    v4 = [ip for ip in ips if ip.version == 4]
    assert ips[:len(v4)] == sorted(v4)                 # every IPv4 first, numerically
    assert ips[len(v4):] == sorted(ips[len(v4):])      # then IPv6, numerically


def test_numeric_not_textual_order():
    addrs = ["10.0.0.10", "10.0.0.9", "10.0.1.2", "9.255.255.255", "10.0.0.100"]
    nodes = [NodeInfo(i, a, 1) for i, a in enumerate(addrs)]
    assert [n.address for n in order_nodes(nodes)] == [
        "9.255.255.255", "10.0.0.9", "10.0.0.10", "10.0.0.100", "10.0.1.2"]


def test_several_clients_on_one_host_order_by_port():
    nodes = [NodeInfo(1, "127.0.0.1", 40000), NodeInfo(2, "127.0.0.1", 30764)]
    assert [n.data_port for n in order_nodes(nodes)] == [30764, 40000]


def test_ipv4_mapped_sorts_with_ipv4():
    assert address_key("::ffff:10.0.0.1") == address_key("10.0.0.1")


def test_hosts_file_order_wins():
    nodes = [NodeInfo(1, "198.18.0.2", 1, "b", listed=2), NodeInfo(2, "198.18.0.3", 1, "c", listed=1),
             NodeInfo(3, "198.18.0.4", 1, "d.cluster", listed=0)]
    ordered = order_nodes(nodes, by_list=True)
    assert [n.node_id for n in ordered] == [3, 2, 1]


def test_hosts_entries_match_the_real_source_only():
    hosts = ["d", "198.18.0.3", "::ffff:198.18.0.2", "unresolved"]
    index = HostList(hosts, {"d": ["198.18.0.4", "fd42:6b64::4"]})
    assert index.first_match("198.18.0.4") == 0
    assert index.first_match("fd42:6b64::4") == 0
    assert index.first_match("198.18.0.3") == 1
    assert index.first_match("198.18.0.2") == 2
    # A name is never compared as text with anything the peer says.
    assert index.first_match("198.18.0.9") is None
    assert HostList(["d"]).first_match("d") is None
    assert HostList(["d"]).names == ["d"]


def test_render_deep_chain_without_recursion_limit():
    lines = render(build_tree(5000, 1), {})
    assert len(lines) == 5001 and lines[-1].strip() == "5000"


# The indexed hosts list answers as a scan by address would, line for line.
_HOSTS = st.sampled_from(["n1", "n1.example", "n2", "198.18.0.2", "::ffff:198.18.0.2",
                          "fd42::2", "198.18.0.3", "n10", ""])
_RESOLVED = {"n1": ["198.18.0.3"], "n1.example": ["fd42::2", "198.18.0.2"], "n2": []}


@given(st.lists(_HOSTS, max_size=8), st.sampled_from(["198.18.0.2", "fd42::2", "10.1.1.1", "n1"]))
def test_host_list_index_agrees_with_the_scan(hosts, source):
    from kadeploy.core.topology import is_address

    def names(entry):
        return [entry] if is_address(entry) else _RESOLVED.get(entry, [])

    scan = next((i for i, entry in enumerate(hosts)
                 if is_address(source) and any(address_key(a) == address_key(source) for a in names(entry))),
                None)
    assert HostList(hosts, _RESOLVED).first_match(source) == scan


def test_render_with_a_limit_says_how_many_more():
    tree = build_tree(10_000, 1)
    lines = render(tree, {0: "server"}, limit=200)
    assert len(lines) == 202 and lines[0] == "server" and lines[-1] == "... and 9800 more"
    assert lines[200] == " " * 400 + "200"
    assert render(build_tree(3, 2), {}, limit=200) == ["0", "  1", "    3", "  2"]
    assert tree.depth(10_000) == 10_000 and build_tree(7, 2).depth(7) == 3
