"""The network boot kit (issue 12): build the install system's boot image and serve it.

``build``: a kernel and an initramfs (Debian packages, kadeploy, an /init that runs
``ka-d-client --install``). ``serve``: dnsmasq (DHCP or proxy-DHCP, TFTP of iPXE), an
HTTP server for the per-node iPXE scripts, the kernel and the initramfs, and a log of
every node's steps. The pure parts (configuration text, iPXE scripts, log parsing,
node states) have no I/O and are tested without sockets.
"""
