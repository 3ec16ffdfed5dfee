"""``python -m bench``: how fast the engine drains a backlog compared with the bare floor of
its pattern (BRPOPLPUSH + LREM), how quickly it picks up a job at a steady rate, and how
much memory its worker takes. See bench/README.md."""
