"""Stage package: launch."""
