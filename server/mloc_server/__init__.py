"""The MLOC coordinator: REST API, GPU-aware scheduler, leases, artifact presigning.

It depends on no ML library: task specs are validated with the shared pydantic models alone.
"""
