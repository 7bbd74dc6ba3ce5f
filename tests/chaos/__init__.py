"""The fault suite (`make chaos`): real processes under kills, partitions, WAN links and storage faults."""
