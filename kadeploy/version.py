__version__ = "0.1.0"
# The original's protocol string was "Ka-deploy-0.6"; ours is a new wire format.
PROTOCOL_NAME = "kadeploy"
# 2: frames after a keyed handshake carry a MAC (kadeploy.core.protocol.FrameAuth).
PROTOCOL_VERSION = 2
# How kadeploy names itself in messages and reports.
SOFTWARE = f"kadeploy {__version__}"
