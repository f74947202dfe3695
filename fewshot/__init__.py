"""Stage package: fewshot."""
