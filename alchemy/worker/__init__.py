"""The process side: the supervisor, one consumer per queue, membership and recovery."""
