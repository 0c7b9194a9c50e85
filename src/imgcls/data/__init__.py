"""Data channels and their readers: RecordIO, images with .lst files, Pipe mode streams."""
