"""Training-time components of swift_plugins (packed attention, packing template)."""
