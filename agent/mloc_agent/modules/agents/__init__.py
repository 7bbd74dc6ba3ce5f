"""agent_inference: a tool-using agent, its tools, and the sandbox its python tool runs code in."""
