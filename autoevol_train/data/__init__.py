"""Seed data in, training data out: seed formats → one row schema (`formats`), append-only stores of finished
items (`parts`), exact and near-duplicate removal (`dedup`), benchmark decontamination (`decontam`),
complexity / diversity statistics (`stats`), sharded parquet + rejects + dataset card (`writers`,
`assemble`)."""
