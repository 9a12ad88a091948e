"""Helpers of `kadeploy bench` (kadeploy/bench.py), one job per module.

- synthetic: the producer and consumer of ``--synthetic SIZE`` / ``--discard``;
- runner:    runs one command in a node, records its wall clock and CPU;
- star:      the star baseline's sender (one connection per receiver);
- methods:   the command lines of each method (kadeploy, DIY chain, star, udpcast);
- execute:   one experiment on a virtual cluster, measured;
- output:    CSV, JSON and PNG plots;
- progress:  a progress display (rich when installed, else plain lines).
"""
