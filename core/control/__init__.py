"""Remote control (issue 8; placeholder until it lands)."""
