"""Pipe mode: RecordIO streams read epoch by epoch from FIFOs, decoded and augmented in Python."""
