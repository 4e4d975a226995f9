"""`ref2img mcp`: a Model Context Protocol server, so that any MCP client (desktop assistants, IDE
agents, agent frameworks) can make images from a reference with no glue code.

Built on the official MCP Python SDK (`mcp`, the `mcp` extra). The tools run on one of three
backends, as the CLI does: the local engine in this process, a ref2img server, or the Tomoviee cloud.
"""

from ref2img.mcp_server.tools import build_server

__all__ = ["build_server"]
