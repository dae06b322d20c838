"""Offline model code (torch): config parsing, checkpoint loading, the PLLaVA modules."""
