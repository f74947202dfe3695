"""Stage package: pretrain."""
