"""Operating alchemy: integration with service managers and operators' tools."""
