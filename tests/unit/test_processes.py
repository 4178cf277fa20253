"""Ports for the servers tests and benches start: free, with their neighbour, out of the way of
clients' outgoing connections."""

from __future__ import annotations

import socket

from monitor.ops.processes import _ephemeral_start, free_ports


def test_free_ports_are_distinct_bindable_pairs_below_the_ephemeral_range():
    ports = free_ports(8)
    assert len(set(ports)) == 8 and not any(p + 1 in ports for p in ports)
    assert all(1024 <= p < p + 1 < _ephemeral_start() for p in ports)
    for p in ports:
        for port in (p, p + 1):
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
