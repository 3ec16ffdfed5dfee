"""What the handlers know about content: platform formats, the prompts, the shapes of the
models' replies, the quality score, the research scores and the media store. Pure code
with no I/O except :mod:`alchemy.content.storage`."""
