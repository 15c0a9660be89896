"""Test data shared by the unit and wire tiers."""
