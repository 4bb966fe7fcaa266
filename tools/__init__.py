"""Developer and release tools run from the checkout (never shipped in the wheel)."""
