"""fairbench's lab: world building and research studies, kept outside the installed package."""
