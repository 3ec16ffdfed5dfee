"""What the handlers know about content: platform formats, the prompts, the shapes of the
models' replies, the quality score and the research scores. Pure code with no I/O (the
media store is :mod:`alchemy.storage`)."""
