"""Prompt building, shared by data preparation and every stage that tokenizes: the prompt formats
(templates), fitting a record into the token caps (truncation), and batches (batching)."""
