"""Skills and mastery: the course's skill catalog (skills.toml), Bayesian
Knowledge Tracing, and the per-student mastery each graded attempt updates."""
