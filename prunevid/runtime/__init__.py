"""Online side: run exported graphs from a video file to an answer. Never imports torch."""
