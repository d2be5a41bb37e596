"""A TutorShop-compatible problem selector fed by grading results
(docs/selector.md): protocol models, policies, and the selection engine."""
