"""What agents use: the MCP server and its tools, agent operations, and the roster of agents."""
