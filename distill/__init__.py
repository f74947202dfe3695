"""Stage package: distill."""
