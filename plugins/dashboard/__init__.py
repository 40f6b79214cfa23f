"""The web dashboard (issue 11; placeholder until it lands)."""
