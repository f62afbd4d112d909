"""Text moderation classifier service (CPU): MiniLM sentence embeddings plus a trained linear head."""
