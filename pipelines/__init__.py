"""End-to-end pipelines built on the medgan library, each with its config schema."""
