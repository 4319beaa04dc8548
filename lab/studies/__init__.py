"""Research studies on fairbench's methods and worlds; each takes --out and writes only there."""
